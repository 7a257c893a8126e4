import math

import torch

from kinema.models.attention import SpatialAttention, TemporalAttention, frame_attention_bias


def _naive(tokens, layer, bias=None):
    """softmax(QK^T / sqrt(d) + bias) V, written out (the reference lives only in this test)."""
    q, k, v = layer.qkv(tokens).chunk(3, dim=-1)
    h = layer.heads
    split = lambda t: t.reshape(*t.shape[:-1], h, -1).transpose(-2, -3)  # [..., h, n, d]
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    out = scores.softmax(-1) @ v
    return layer.proj(out.transpose(-2, -3).reshape(*tokens.shape[:-1], -1))


def _randomize(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer


def test_spatial_attention_matches_naive_reference():
    layer = _randomize(SpatialAttention(8, head_dim=4, norm_groups=2))
    x = torch.randn(2, 8, 3, 4, 4)
    out = layer(x)
    tokens = layer.norm(x).permute(0, 2, 3, 4, 1).reshape(6, 16, 8)
    ref = _naive(tokens, layer).reshape(2, 3, 4, 4, 8).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(out, x + ref, rtol=1e-5, atol=1e-5)


def test_temporal_attention_matches_naive_reference_with_bias():
    layer = _randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    x = torch.randn(2, 8, 5, 3, 3)
    from kinema.conditioning import Conditioning

    segments = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 0, 0, 0]])
    out = layer(x, Conditioning(frame_segments=segments))
    bias = frame_attention_bias(segments, layer.rel_pos(5))  # [B, heads, F, F]
    tokens = layer.norm(x).permute(0, 3, 4, 2, 1).reshape(2, 9, 5, 8)  # [B, HW, F, C]
    ref = _naive(tokens, layer, bias[:, None]).reshape(2, 3, 3, 5, 8).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(out, x + ref, rtol=1e-5, atol=1e-5)


def test_relative_bias_depends_only_on_offset():
    layer = _randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    bias = layer.rel_pos(6)
    for i in range(5):
        for j in range(5):
            torch.testing.assert_close(bias[:, i, j], bias[:, i + 1, j + 1])
    assert not torch.allclose(bias[:, 0, 1], bias[:, 1, 0]), "direction matters"


def test_frame_bias_masks_other_segments():
    bias = frame_attention_bias(torch.tensor([[0, 0, 1]]), torch.zeros(2, 3, 3))
    assert bias.shape == (1, 2, 3, 3)
    assert torch.isinf(bias[0, :, 0, 2]).all() and torch.isinf(bias[0, :, 2, 0]).all()
    assert torch.isfinite(bias[0, :, 2, 2]).all() and torch.isfinite(bias[0, :, 0, 1]).all()


def test_frame_group_norm_is_per_frame_and_matches_group_norm_on_images():
    from kinema.models.attention import group_norm

    norm = group_norm(8, 4)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 3, 5, 5) * 3 + 1
    out = norm(x)
    ref = torch.nn.functional.group_norm(x.transpose(1, 2).reshape(6, 8, 5, 5), 4, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(out, ref.reshape(2, 3, 8, 5, 5).transpose(1, 2), rtol=1e-5, atol=1e-5)
