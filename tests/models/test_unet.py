import pytest
import torch

from kinema.conditioning import NULL_LABEL, Conditioning
from kinema.models import UNet3D, UNetConfig, backbone_entry, build_backbone
from kinema.models.embeddings import conditioning_channels
from kinema.models.unet import from_patches, to_patches
from kinema.models.attention import TemporalAttention
from kinema.models.blocks import TemporalConv
from model_helpers import randomize


def tiny_cfg(**kw):
    base = dict(in_channels=3, dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(0, 1), head_dim=4,
                norm_groups=4)
    base.update(kw)
    return UNetConfig(**base)


def per_frame_change(a, b):
    return (a - b).abs().amax(dim=(0, 1, 3, 4))  # [F]


@pytest.mark.parametrize("frames,height,width", [(4, 8, 8), (1, 8, 8), (3, 12, 16), (6, 4, 4)])
def test_output_shape(frames, height, width):
    model = randomize(UNet3D(tiny_cfg(out_channels=5)))
    z = torch.randn(2, 3, frames, height, width)
    out = model(z, torch.tensor([-20.0, 20.0]))
    assert out.shape == (2, 5, frames, height, width) and torch.isfinite(out).all()


def test_zero_init_and_gradient_flow():
    model = UNet3D(tiny_cfg())
    z = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(model(z, torch.zeros(2)), torch.zeros_like(z)), "a fresh model outputs exactly 0"
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.1)
    model(z, torch.zeros(2)).square().mean().backward()
    assert model.conv_in.weight.grad is not None and model.conv_in.weight.grad.abs().sum() > 0
    res_out_grads = [m.out.weight.grad.abs().sum() for m in model.modules() if hasattr(m, "out")]
    assert max(res_out_grads) > 0, "zeroed residual outputs receive gradients, so they start learning"


def test_bad_inputs_raise_naming_the_shape():
    model = UNet3D(tiny_cfg(dim_mults=(1, 2, 2), attn_levels=(1,)))
    with pytest.raises(ValueError, match=r"divisible by 4.*\(1, 3, 2, 6, 8\)"):
        model(torch.randn(1, 3, 2, 6, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 2, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="logsnr"):
        model(torch.randn(2, 3, 2, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="frame_segments"):
        model(torch.randn(1, 3, 2, 8, 8), torch.zeros(1), Conditioning(frame_segments=torch.zeros(1, 3).long()))


@pytest.mark.parametrize("bad,match", [
    (dict(attn_levels=(2,)), "attn_levels"),
    (dict(dim_mults=()), "dim_mults"),
    (dict(dropout=1.5), "1.5"),
    (dict(dim=0), "dim must be >= 1, got 0"),
    (dict(dim=10, head_dim=3), "10 channels"),
    (dict(rel_pos_buckets=3), "rel_pos_buckets"),
    (dict(num_classes=-1), "num_classes"),
    (dict(patch_size=0), "patch_size must be >= 1, got 0"),
])
def test_config_validation_names_the_bad_value(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_cfg(**bad)


@pytest.mark.parametrize("temporal_attention", [True, False])
def test_joint_training_mask_blocks_information_between_images(temporal_attention):
    """VDM joint image-video training: frames 0-3 are one clip, frames 4 and 5 independent images."""
    model = randomize(UNet3D(tiny_cfg(temporal_attention=temporal_attention))).eval()
    kinds = (TemporalAttention,) if temporal_attention else (TemporalConv,)
    assert any(isinstance(m, kinds) for m in model.modules())
    z = torch.randn(1, 3, 6, 8, 8)
    lam = torch.zeros(1)
    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 0, 0, 1, 2]]))
    base = model(z, lam, cond)

    image_poked = z.clone()
    image_poked[:, :, 4] += torch.randn(1, 3, 8, 8)
    change = per_frame_change(model(image_poked, lam, cond), base)
    assert change[4] > 1e-3
    assert torch.all(change[[0, 1, 2, 3, 5]] < 1e-5), change

    video_poked = z.clone()
    video_poked[:, :, 1] += torch.randn(1, 3, 8, 8)
    change = per_frame_change(model(video_poked, lam, cond), base)
    assert torch.all(change[[0, 1, 2, 3]] > 1e-3), change
    assert torch.all(change[[4, 5]] < 1e-5), change

    unmasked = per_frame_change(model(video_poked, lam), model(z, lam))
    if temporal_attention:
        assert torch.all(unmasked > 1e-3), f"without segments every frame sees frame 1: {unmasked}"
    else:  # temporal convolutions: the influence decays with the distance to frame 1
        assert torch.all(unmasked[:5] > 1e-5) and unmasked[5] > 0, unmasked


def test_batch_items_are_independent():
    model = randomize(UNet3D(tiny_cfg())).eval()
    z = torch.randn(3, 3, 2, 8, 8)
    lam = torch.tensor([-5.0, 0.0, 5.0])
    full = model(z, lam)
    torch.testing.assert_close(model(z[1:2], lam[1:2]), full[1:2], rtol=1e-4, atol=1e-5)


def test_class_conditioning_and_null_label():
    model = randomize(UNet3D(tiny_cfg(num_classes=3)))
    z = torch.randn(2, 3, 2, 8, 8)
    lam = torch.zeros(2)
    a = model(z, lam, Conditioning(class_labels=torch.tensor([0, 1])))
    b = model(z, lam, Conditioning(class_labels=torch.tensor([2, 1])))
    assert (a[0] - b[0]).abs().max() > 1e-3, "the label changes the output"
    torch.testing.assert_close(a[1], b[1])
    null = model(z, lam, Conditioning(class_labels=torch.tensor([NULL_LABEL, NULL_LABEL])))
    torch.testing.assert_close(model(z, lam), null)  # no labels given: the null label
    mixed = model(z, lam, Conditioning(class_labels=torch.tensor([NULL_LABEL, 1])))
    torch.testing.assert_close(mixed[0], null[0])
    torch.testing.assert_close(mixed[1], a[1])
    with pytest.raises(ValueError, match="class label 3 out of range"):
        model(z, lam, Conditioning(class_labels=torch.tensor([3, 0])))


def test_noise_level_changes_output_and_extreme_logsnr_is_finite():
    model = randomize(UNet3D(tiny_cfg()))
    z = torch.randn(1, 3, 2, 8, 8)
    outs = [model(z, torch.tensor([lam])) for lam in (-30.0, -1.0, 1.0, 30.0)]
    assert all(torch.isfinite(o).all() for o in outs)
    assert (outs[1] - outs[2]).abs().max() > 1e-3
    assert torch.isfinite(model(z, torch.tensor(1e4))).all(), "a 0-dim logsnr broadcasts over the batch"


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    plain = randomize(UNet3D(tiny_cfg(dropout=0.0)))
    ckpt = UNet3D(tiny_cfg(dropout=0.0, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    z = torch.randn(2, 3, 4, 8, 8)
    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0]]))
    outs, grads = [], []
    for model in (plain, ckpt):
        out = model(z, torch.tensor([1.0, -2.0]), cond)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_channels_last_3d_input_and_model():
    model = randomize(UNet3D(tiny_cfg()))
    z = torch.randn(2, 3, 3, 8, 8)
    ref = model(z, torch.zeros(2))
    model = model.to(memory_format=torch.channels_last_3d)
    out = model(z.contiguous(memory_format=torch.channels_last_3d), torch.zeros(2))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32():
    model = randomize(UNet3D(tiny_cfg()), std=0.1)
    z = torch.randn(1, 3, 2, 8, 8)
    ref = model(z, torch.tensor([3.0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(z, torch.tensor([3.0]), Conditioning(frame_segments=torch.tensor([[0, 1]])))
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_extra_input_channels_from_lowres_and_context():
    model = randomize(UNet3D(tiny_cfg(extra_in_channels=3)))
    z = torch.randn(1, 3, 4, 8, 8)
    lowres = torch.randn(1, 3, 2, 4, 4)  # half the frames and half the size
    out = model(z, torch.zeros(1), Conditioning(lowres=lowres))
    assert out.shape == z.shape
    assert (out - model(z, torch.zeros(1), Conditioning(lowres=-lowres))).abs().max() > 1e-3
    extra = conditioning_channels(z, Conditioning(lowres=lowres), 3)
    torch.testing.assert_close(extra[:, :, 0], extra[:, :, 1])  # frames repeated (nearest in time)
    torch.testing.assert_close(extra[:, :, 2], extra[:, :, 3])
    assert (extra[:, :, 1] - extra[:, :, 2]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="extra_in_channels=3"):
        model(z, torch.zeros(1))

    model = UNet3D(tiny_cfg(extra_in_channels=4))  # context (3 channels) + its mask
    mask = torch.tensor([[True, False, False, False]])
    extra = conditioning_channels(z, Conditioning(context=z, context_mask=mask), 4)
    assert extra.shape == (1, 4, 4, 8, 8)
    assert torch.equal(extra[:, :3, 0], z[:, :, 0]) and torch.all(extra[:, :3, 1:] == 0)
    assert torch.all(extra[:, 3, 0] == 1) and torch.all(extra[:, 3, 1:] == 0)


def test_self_condition_reads_the_estimate_and_refuses_it_when_off():
    model = randomize(UNet3D(tiny_cfg(self_condition=True)))
    assert "self_cond" in model.spec.reads and model.conv_in.in_channels == 6
    z = torch.randn(2, 3, 4, 8, 8)
    x_hat = torch.randn_like(z)
    none = model(z, torch.zeros(2))
    torch.testing.assert_close(none, model(z, torch.zeros(2), Conditioning(self_cond=torch.zeros_like(z))))
    changed = model(z, torch.zeros(2), Conditioning(self_cond=x_hat))
    assert (changed - none).abs().amax() > 1e-3, "the estimate reaches the output"
    with pytest.raises(ValueError, match="self_cond must have z's shape"):
        model(z, torch.zeros(2), Conditioning(self_cond=x_hat[:, :, :2]))
    plain = UNet3D(tiny_cfg())
    assert "self_cond" not in plain.spec.reads
    with pytest.raises(ValueError, match="model.unet.self_condition=false"):
        plain(z, torch.zeros(2), Conditioning(self_cond=x_hat))


def test_patches_round_trip_and_keep_pixels_in_their_frame_and_block():
    x = torch.randn(2, 3, 4, 6, 8)
    patches = to_patches(x, 2)
    assert patches.shape == (2, 12, 4, 3, 4)
    assert torch.equal(from_patches(patches, 2), x) and to_patches(x, 1) is x
    # pixel (y, x) of channel c lands in block (y // 2, x // 2), channel c * 4 + (y % 2) * 2 + x % 2, same frame
    c, f, y, xx = 1, 2, 3, 6
    assert patches[0, c * 4 + (y % 2) * 2 + xx % 2, f, y // 2, xx // 2] == x[0, c, f, y, xx]


def test_patch_size_runs_the_net_at_lower_resolution_with_full_resolution_output():
    model = randomize(UNet3D(tiny_cfg(patch_size=2, dim_mults=(1, 2), self_condition=True, extra_in_channels=3)))
    assert model.conv_in.in_channels == (3 + 3 + 3) * 4 and model.conv_out.out_channels == 3 * 4
    assert model.spec.size_multiple == 4
    z = torch.randn(1, 3, 3, 8, 12)
    lowres = torch.randn(1, 3, 3, 4, 6)
    out = model(z, torch.zeros(1), Conditioning(lowres=lowres))
    assert out.shape == z.shape
    # every output pixel of a 2x2 block can differ (it is not a nearest-neighbour upsampling)
    blocks = out[0, 0, 0].reshape(4, 2, 6, 2)
    assert (blocks - blocks[:, :1, :, :1]).abs().amax() > 1e-4
    # a change in one pixel of frame 0 reaches frame 0 only when no layer mixes frames
    frame_local = randomize(UNet3D(tiny_cfg(patch_size=2, attn_levels=(1,),
                                            temporal_mixing=("none", "none"), middle_attention=False)))
    z2 = z.clone()
    z2[0, 0, 0, 5, 7] += 1.0
    change = per_frame_change(frame_local(z, torch.zeros(1)), frame_local(z2, torch.zeros(1)))
    assert change[0] > 1e-4 and torch.all(change[1:] == 0)
    with pytest.raises(ValueError, match=r"divisible by 4 \(patch_size"):
        model(torch.randn(1, 3, 2, 6, 8), torch.zeros(1), Conditioning(lowres=lowres))


def test_registry_and_parameter_count():
    model = build_backbone("unet3d", tiny_cfg())
    entry = backbone_entry("unet3d")
    assert isinstance(model, UNet3D) and (entry.config_cls, entry.model_cls, entry.section) == (UNetConfig, UNet3D, "unet")
    assert model.num_parameters() == sum(p.numel() for p in model.parameters()) > 0
    with pytest.raises(ValueError, match="'dit'.*unet3d"):
        build_backbone("dit", tiny_cfg())
    with pytest.raises(TypeError, match="'walt' is built from a WALTConfig, got UNetConfig"):
        build_backbone("walt", tiny_cfg())
