import pytest
import torch
import torch.nn.functional as F

from kinema.conditioning import Conditioning
from kinema.models.blocks import (Downsample, FrameGroupNorm, NoiseLevelEmbedding, ResBlock, TemporalConv, Upsample,
                                  group_norm, logsnr_to_position, num_groups, sinusoidal_embedding, space_conv,
                                  zero_init_residual_outputs)


def randomize(module, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def per_frame_change(a, b):
    return (a - b).abs().amax(dim=(0, 1, 3, 4))  # [F]


def test_num_groups_divides_channels():
    assert num_groups(64, 32) == 32 and num_groups(16, 32) == 16 and num_groups(48, 32) == 16
    for c in (8, 12, 48, 96, 320):
        assert c % num_groups(c, 32) == 0


def test_frame_group_norm_matches_group_norm_of_each_frame():
    norm = randomize(group_norm(8, 4))
    assert isinstance(norm, FrameGroupNorm) and norm.num_groups == 4
    x = torch.randn(2, 8, 3, 5, 5) * 3 + 1
    ref = torch.stack([F.group_norm(x[:, :, t], 4, norm.weight, norm.bias, norm.eps) for t in range(3)], dim=2)
    torch.testing.assert_close(norm(x), ref, rtol=1e-5, atol=1e-5)
    cl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(norm(cl), ref, rtol=1e-5, atol=1e-5)


def test_space_conv_and_resblock_never_mix_frames():
    block = randomize(ResBlock(4, 8, emb_dim=6, norm_groups=2))
    x, emb = torch.randn(2, 4, 5, 6, 6), torch.randn(2, 6)
    base = block(x, emb)
    assert base.shape == (2, 8, 5, 6, 6)
    poked = x.clone()
    poked[:, :, 2] += torch.randn(2, 4, 6, 6)
    change = per_frame_change(block(poked, emb), base)
    assert change[2] > 1e-3 and torch.all(change[[0, 1, 3, 4]] == 0), change
    assert space_conv(4, 4).kernel_size == (1, 3, 3)


def test_resblock_zero_init_is_identity_and_film_uses_embedding():
    block = ResBlock(8, 8, emb_dim=6, norm_groups=4)
    zero_init_residual_outputs(block)
    x = torch.randn(1, 8, 2, 4, 4)
    assert torch.equal(block(x, torch.randn(1, 6)), x)
    block = randomize(block)
    a, b = block(x, torch.zeros(1, 6)), block(x, torch.ones(1, 6))
    assert (a - b).abs().max() > 1e-3
    assert isinstance(ResBlock(4, 8, 6, norm_groups=2).skip, torch.nn.Conv3d)


def test_resample_changes_space_only():
    x = torch.randn(2, 4, 3, 8, 8)
    assert Downsample(4)(x).shape == (2, 4, 3, 4, 4)
    up = Upsample(4)
    assert up(x).shape == (2, 4, 3, 16, 16)
    with torch.no_grad():  # identity centre tap: nearest upsampling becomes visible
        up.conv.weight.zero_()
        up.conv.bias.zero_()
        up.conv.weight[:, :, 0, 1, 1] = torch.eye(4)
    torch.testing.assert_close(up(x)[..., ::2, ::2], x)
    torch.testing.assert_close(up(x)[..., 1::2, 1::2], x)


def test_temporal_conv_mixes_neighbours_only_and_respects_segments():
    layer = TemporalConv(4, norm_groups=2)
    zero_init_residual_outputs(layer)
    x = torch.randn(1, 4, 6, 3, 3)
    assert torch.equal(layer(x), x), "zero-initialized output: identity"
    layer = randomize(layer)
    base = layer(x)
    poked = x.clone()
    poked[:, :, 2] += torch.randn(1, 4, 3, 3)  # not a constant: per-frame GN would remove that
    change = per_frame_change(layer(poked), base)
    assert torch.all(change[[1, 2, 3]] > 1e-3) and torch.all(change[[0, 4, 5]] == 0), change

    one_clip = Conditioning(frame_segments=torch.zeros(1, 6, dtype=torch.long))
    torch.testing.assert_close(layer(x, one_clip), base, rtol=1e-5, atol=1e-5)

    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 0, 1, 2, 2]]))
    base = layer(x, cond)
    poked = x.clone()
    poked[:, :, 3] += torch.randn(1, 4, 3, 3)  # an independent image
    change = per_frame_change(layer(poked, cond), base)
    assert change[3] > 1e-3 and torch.all(change[[0, 1, 2, 4, 5]] < 1e-6), change
    poked = x.clone()
    poked[:, :, 2] += torch.randn(1, 4, 3, 3)  # last frame of the clip
    change = per_frame_change(layer(poked, cond), base)
    assert torch.all(change[[1, 2]] > 1e-3) and torch.all(change[[0, 3, 4, 5]] < 1e-6), change


def test_sinusoidal_embedding():
    v = torch.tensor([0.0, 1.0, 500.0])
    emb = sinusoidal_embedding(v, 8)
    assert emb.shape == (3, 8) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    torch.testing.assert_close(emb[:, :4].square() + emb[:, 4:].square(), torch.ones(3, 4))
    assert sinusoidal_embedding(v, 7).shape == (3, 7)


def test_logsnr_embedding_finite_and_distinct_over_wide_range():
    lam = torch.linspace(-30, 30, 121)
    pos = logsnr_to_position(lam)
    assert pos[0] > pos[-1], "position decreases with log-SNR (increases with noise)"
    torch.testing.assert_close(logsnr_to_position(torch.tensor([20.0, -20.0])), torch.tensor([0.0, 1000.0]))
    emb = NoiseLevelEmbedding(16, 32)
    out = emb(lam)
    assert out.shape == (121, 32) and torch.isfinite(out).all()
    dist = torch.cdist(out, out) + torch.eye(121) * 1e3
    assert dist.min() > 1e-4
    assert torch.isfinite(emb(torch.tensor([-1e4, 1e4], dtype=torch.float64))).all()


@pytest.mark.parametrize("cin,cout", [(8, 8), (4, 8)])
def test_resblock_under_bf16_autocast_is_finite(cin, cout):
    block = randomize(ResBlock(cin, cout, emb_dim=6, norm_groups=4))
    x = torch.randn(1, cin, 2, 4, 4) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x, torch.randn(1, 6))
    assert torch.isfinite(out).all()
