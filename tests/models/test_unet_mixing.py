"""Per-level temporal mixing of the U-Net (attention | spacetime | conv | none): the default keeps the VDM layout,
a convolution-only stage runs at sizes and frame counts other than the trained ones and mixes frames
only locally, 'none' mixes no frames at all."""

import pytest
import torch

from model_helpers import randomize
from kinema.conditioning import Conditioning
from kinema.models.attention import SpacetimeAttention, SpatialAttention, TemporalAttention
from kinema.models.blocks import TemporalConv
from kinema.models.unet import UNet3D, UNetConfig

SMALL = dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, head_dim=8, norm_groups=4)


def count(net, kind):
    return sum(isinstance(m, kind) for m in net.modules())


def test_default_mixing_is_the_vdm_layout():
    cfg = UNetConfig(**SMALL, attn_levels=(1,))
    assert cfg.level_mixing() == ("none", "attention") and cfg.middle_mixing() == "attention"
    assert UNetConfig(**SMALL, attn_levels=(1,), temporal_attention=False).level_mixing() == ("conv", "conv")
    # explicit mixing equal to the default builds the same tensors (checkpoints stay loadable)
    a = UNet3D(UNetConfig(**SMALL, attn_levels=(1,)))
    b = UNet3D(UNetConfig(**SMALL, attn_levels=(1,), temporal_mixing=("none", "attention")))
    assert list(a.state_dict()) == list(b.state_dict())


def test_per_level_choices_build_the_named_layers():
    net = UNet3D(UNetConfig(**SMALL, attn_levels=(), temporal_mixing=("conv", "attention"), middle_attention=False))
    assert count(net, SpatialAttention) == 0
    # level 1: 1 down + 2 up blocks attend over time; level 0: 1 down + 2 up convolve; middle: conv-less none
    assert count(net, TemporalAttention) == 3 and count(net, TemporalConv) == 3
    joint = UNet3D(UNetConfig(**SMALL, attn_levels=(1,), temporal_mixing=("none", "spacetime")))
    # level 1 (1 down + 2 up) and the middle block attend over space and time jointly
    assert count(joint, SpacetimeAttention) == 4 and count(joint, TemporalAttention) == 4
    with pytest.raises(ValueError, match="one entry per level"):
        UNetConfig(**SMALL, temporal_mixing=("conv",))
    with pytest.raises(ValueError, match="unknown entries"):
        UNetConfig(**SMALL, temporal_mixing=("conv", "lstm"))
    with pytest.raises(ValueError, match="not both"):
        UNetConfig(**SMALL, temporal_mixing=("conv", "conv"), temporal_attention=False)


def conv_only(**extra):
    torch.manual_seed(0)
    cfg = UNetConfig(**SMALL, attn_levels=(), temporal_mixing=("conv", "conv"), middle_attention=False, **extra)
    return randomize(UNet3D(cfg), std=0.1).eval()


def test_conv_only_stage_runs_at_other_sizes_and_frame_counts():
    net = conv_only(extra_in_channels=3)
    assert count(net, SpatialAttention) == 0 and count(net, TemporalAttention) == 0
    for frames, h, w in [(4, 16, 16), (7, 24, 40), (12, 8, 32)]:  # trained at 4 x 16^2, say
        z = torch.randn(1, 3, frames, h, w)
        cond = Conditioning(lowres=torch.rand(1, 3, frames // 2 or 1, h // 2, w // 2))
        out = net(z, torch.zeros(1), cond)
        assert out.shape == z.shape and torch.isfinite(out).all()


def test_conv_only_mixes_frames_locally_and_none_not_at_all():
    net = conv_only()
    radius = count(net, TemporalConv)  # each kernel-3 temporal conv widens the receptive field by 1 frame
    frames = radius + 4
    z = torch.randn(1, 3, frames, 8, 8)
    z2 = z.clone()
    z2[:, :, 0] += 1.0
    with torch.no_grad():
        diff = (net(z, torch.zeros(1)) - net(z2, torch.zeros(1))).abs().amax(dim=(0, 1, 3, 4))  # [F]
    assert diff[1] > 0 and diff[radius + 1:].max() == 0
    torch.manual_seed(0)
    none = randomize(UNet3D(UNetConfig(**SMALL, attn_levels=(1,), temporal_mixing=("none", "none"),
                                       middle_attention=True)), std=0.1).eval()
    with torch.no_grad():
        diff = (none(z, torch.zeros(1)) - none(z2, torch.zeros(1))).abs().amax(dim=(0, 1, 3, 4))
    assert diff[0] > 0 and diff[1:].max() == 0


def test_clip_norm_stats_share_frames_and_refuse_joint_items():
    """norm_stats=clip: GroupNorm pools statistics over the clip, so with no temporal layer at all a
    change in frame 0 still reaches the other frames (per-frame stats: it does not); with one frame
    the two are the same function; joint items (several frame segments) are refused."""
    torch.manual_seed(0)
    kw = dict(**SMALL, attn_levels=(1,), temporal_mixing=("none", "none"))
    per_frame = randomize(UNet3D(UNetConfig(**kw)), std=0.1).eval()
    clip = UNet3D(UNetConfig(**kw, norm_stats="clip")).eval()
    clip.load_state_dict(per_frame.state_dict())  # same tensors: only the statistics differ
    z = torch.randn(1, 3, 4, 8, 8)
    z2 = z.clone()
    z2[:, :, 0] += 1.0
    with torch.no_grad():
        for net, reaches in ((per_frame, False), (clip, True)):
            diff = (net(z, torch.zeros(1)) - net(z2, torch.zeros(1))).abs().amax(dim=(0, 1, 3, 4))
            assert diff[0] > 0 and bool(diff[1:].max() > 1e-4) == reaches
        one = z[:, :, :1]
        torch.testing.assert_close(clip(one, torch.zeros(1)), per_frame(one, torch.zeros(1)))
    joint = Conditioning(frame_segments=torch.tensor([[0, 0, 1, 2]]))
    with pytest.raises(ValueError, match="norm_stats=clip.*frame_segments"):
        clip(z, torch.zeros(1), joint)
    clip(z, torch.zeros(1), Conditioning(frame_segments=torch.zeros(1, 4, dtype=torch.long)))  # one clip: fine
    with pytest.raises(ValueError, match="norm_stats must be 'frame' or 'clip', got 'batch'"):
        UNetConfig(**kw, norm_stats="batch")
