import math

import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.models.attention import (SpacetimeAttention, SpatialAttention, TemporalAttention, _stride0_bias,
                                     frame_attention_bias, frame_positions, relative_position_bucket)
from kinema.models.blocks import sinusoidal_embedding


def naive_attention(tokens, layer, bias=None):
    """softmax(Q K^T / sqrt(d) + bias) V with explicit scores (this reference lives only in the test).
    ``tokens [..., N, C]``; returns the output projection ``[..., N, C]``."""
    q, k, v = layer.qkv(tokens).chunk(3, dim=-1)
    heads = layer.heads

    def split(t):  # [..., N, C] -> [..., heads, N, d]
        return t.reshape(*t.shape[:-1], heads, -1).transpose(-2, -3)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    out = torch.softmax(scores, dim=-1) @ v
    return layer.out(out.transpose(-2, -3).reshape(*tokens.shape[:-1], -1))


def randomize(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return layer


def test_spatial_attention_matches_naive_reference():
    layer = randomize(SpatialAttention(8, head_dim=4, norm_groups=2))
    assert layer.heads == 2
    x = torch.randn(2, 8, 3, 4, 5)
    tokens = layer.norm(x).permute(0, 2, 3, 4, 1).reshape(6, 20, 8)  # '(b f) (h w) c'
    ref = naive_attention(tokens, layer).reshape(2, 3, 4, 5, 8).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(layer(x), x + ref, rtol=1e-5, atol=1e-5)


def test_spatial_attention_keeps_frames_independent():
    layer = randomize(SpatialAttention(8, head_dim=4, norm_groups=2))
    x = torch.randn(1, 8, 3, 4, 4)
    poked = x.clone()
    poked[:, :, 1, 0, 0] += 1.0
    change = (layer(poked) - layer(x)).abs().amax(dim=(0, 1, 3, 4))
    assert change[1] > 1e-3 and change[0] == 0 and change[2] == 0


def test_temporal_attention_matches_naive_reference_with_bias_and_segments():
    layer = randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    x = torch.randn(2, 8, 5, 3, 2)
    segments = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 0, 0, 0]])
    out = layer(x, Conditioning(frame_segments=segments))
    bias = frame_attention_bias(segments, layer.rel_pos(5))  # [B, heads, F, F]
    tokens = layer.norm(x).permute(0, 3, 4, 2, 1).reshape(2, 6, 5, 8)  # [B, HW, F, C]
    ref = naive_attention(tokens, layer, bias[:, None]).reshape(2, 3, 2, 5, 8).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(out, x + ref, rtol=1e-5, atol=1e-5)
    unmasked = naive_attention(tokens, layer, layer.rel_pos(5)).reshape(2, 3, 2, 5, 8).permute(0, 4, 3, 1, 2)
    torch.testing.assert_close(layer(x), x + unmasked, rtol=1e-5, atol=1e-5)


def test_relative_bias_depends_only_on_offset():
    layer = randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    bias = layer.rel_pos(7)  # [heads, F, F]
    assert bias.shape == (2, 7, 7)
    for i in range(7):
        for j in range(7):
            torch.testing.assert_close(bias[:, i, j], layer.rel_pos.embedding.weight[
                relative_position_bucket(torch.tensor(j - i))])
            if i < 6 and j < 6:
                torch.testing.assert_close(bias[:, i, j], bias[:, i + 1, j + 1])
    assert not torch.allclose(bias[:, 0, 1], bias[:, 1, 0]), "the sign of the offset matters"


def test_relative_position_buckets():
    rel = torch.arange(-200, 201)
    b = relative_position_bucket(rel, num_buckets=32, max_distance=32)
    assert b.min() >= 0 and b.max() < 32
    assert len(set(b[(rel.abs() < 8)].tolist())) == 15, "small offsets are exact"
    pos, neg = b[rel >= 0], b[rel <= 0].flip(0)
    assert torch.all(pos[1:] >= pos[:-1]) and torch.all(neg[1:] >= neg[:-1]), "monotone in |offset|"
    assert b[rel == 40] == b[rel == 200], "clamped beyond max_distance"


def test_temporal_attention_is_translation_equivariant_within_a_segment():
    """The bias depends only on j - i and masked frames contribute nothing, so a clip placed at
    frames 0..3 or at 2..5 (with independent images around it) gets the same outputs."""
    layer = randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    clip, images = torch.randn(1, 8, 4, 2, 2), torch.randn(1, 8, 2, 2, 2)
    early = layer(torch.cat([clip, images], 2), Conditioning(frame_segments=torch.tensor([[0, 0, 0, 0, 1, 2]])))
    late = layer(torch.cat([images, clip], 2), Conditioning(frame_segments=torch.tensor([[1, 2, 0, 0, 0, 0]])))
    torch.testing.assert_close(early[:, :, :4], late[:, :, 2:], rtol=1e-5, atol=1e-5)
    plain = layer(torch.cat([clip, images], 2))
    assert (plain[:, :, :4] - early[:, :, :4]).abs().max() > 1e-3, "without masking the images are seen"


def test_frame_position_tells_identical_frames_apart():
    """A static clip (every frame the same) gives every frame the same values, so without the frame index
    every frame's output is the same whatever the relative bias; with ``frame_position`` they differ."""
    frame = torch.randn(1, 8, 1, 2, 2)
    static = frame.expand(-1, -1, 5, -1, -1)
    plain = randomize(TemporalAttention(8, head_dim=4, norm_groups=2))(static)
    torch.testing.assert_close(plain, plain[:, :, :1].expand_as(plain), rtol=1e-5, atol=1e-5)
    located = randomize(TemporalAttention(8, head_dim=4, norm_groups=2, frame_position=True))(static)
    assert (located[:, :, 1:] - located[:, :, :1]).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-3


def test_frame_positions_count_within_segments():
    assert torch.equal(frame_positions(4), torch.tensor([[0, 1, 2, 3]]))
    seg = torch.tensor([[0, 0, 0, 1, 2], [3, 3, 4, 4, 4]])
    assert torch.equal(frame_positions(5, seg), torch.tensor([[0, 1, 2, 0, 0], [0, 1, 0, 1, 2]]))


def test_frame_position_of_an_appended_image_is_that_of_the_image_alone():
    """Joint training: an image appended as its own segment is at position 0, so it is processed exactly
    as a one-frame clip of it would be (its clip's frames change nothing)."""
    layer = randomize(TemporalAttention(8, head_dim=4, norm_groups=2, frame_position=True))
    clip, image = torch.randn(1, 8, 3, 2, 2), torch.randn(1, 8, 1, 2, 2)
    joint = layer(torch.cat([clip, image], 2), Conditioning(frame_segments=torch.tensor([[0, 0, 0, 1]])))
    torch.testing.assert_close(joint[:, :, 3:], layer(image), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joint[:, :, :3], layer(clip), rtol=1e-5, atol=1e-5)


def test_frame_attention_bias_masks_other_segments():
    rel = torch.randn(2, 4, 4)
    assert frame_attention_bias(None, rel).shape == (1, 2, 4, 4)
    seg = torch.tensor([[0, 0, 1, 2], [5, 5, 5, 5]])
    bias = frame_attention_bias(seg, rel)
    assert bias.shape == (2, 2, 4, 4)
    blocked = torch.isinf(bias)
    expected = seg[:, :, None] != seg[:, None, :]
    assert torch.equal(blocked, expected[:, None].expand_as(blocked))
    assert torch.equal(bias[~blocked], rel[None].expand_as(bias)[~blocked])
    assert torch.isfinite(bias.diagonal(dim1=-2, dim2=-1)).all(), "every frame sees itself"


def test_bias_is_broadcast_not_materialized_over_positions():
    bias = frame_attention_bias(torch.tensor([[0, 0, 1], [0, 1, 2]]), torch.randn(4, 3, 3))  # [B, heads, F, F]
    wide = _stride0_bias(bias, batch=2, positions=1024, dtype=torch.float32)
    assert wide.shape == (8, 1024, 3, 3) and wide.stride(1) == 0 and wide.stride(-1) == 1
    assert wide.untyped_storage().nbytes() <= 8 * 3 * 16 * 4, "O(B heads F^2) storage"
    assert wide.stride(-2) % 16 == 0, "rows aligned for the memory-efficient kernel"
    torch.testing.assert_close(wide[3, 777], bias.reshape(8, 3, 3)[3])


def test_temporal_attention_gradients_reach_relative_bias_and_no_nan_for_images():
    layer = randomize(TemporalAttention(8, head_dim=8, norm_groups=2))
    x = torch.randn(2, 8, 3, 2, 2)
    out = layer(x, Conditioning(frame_segments=torch.tensor([[0, 1, 2], [0, 0, 1]])))
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grad = layer.rel_pos.embedding.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("layer_cls", [SpatialAttention, TemporalAttention])
def test_attention_single_frame_and_channels_last(layer_cls):
    layer = randomize(layer_cls(8, head_dim=4, norm_groups=2))
    x = torch.randn(2, 8, 1, 4, 4)
    assert layer(x).shape == x.shape
    x = torch.randn(2, 8, 3, 4, 4)
    cl = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(layer(cl), layer(x), rtol=1e-5, atol=1e-5)


def test_heads_must_divide_channels():
    with pytest.raises(ValueError, match="100 channels"):
        SpatialAttention(100, head_dim=32)


def sinusoidal(pos, features):
    """The frame-index features of ``pos [B, F]``: ``[B, F, features]``."""
    return sinusoidal_embedding(pos.flatten(), features, max_period=100.0).reshape(*pos.shape, features)


def test_spacetime_attention_matches_naive_reference_with_bias_and_segments():
    """Every position of every frame is a token; the bias of a pair of tokens is their frames' relative
    position bias, -inf across segments."""
    layer = randomize(SpacetimeAttention(8, head_dim=4, norm_groups=2, frame_position=True))
    x = torch.randn(2, 8, 4, 2, 3)
    segments = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 0]])
    cond = Conditioning(frame_segments=segments)
    frame_bias = frame_attention_bias(segments, layer.rel_pos(4))  # [B, heads, F, F]
    bias = frame_bias.repeat_interleave(6, -1).repeat_interleave(6, -2)  # [B, heads, F*HW, F*HW]
    tokens = layer.norm(x).permute(0, 2, 3, 4, 1)  # [B, F, H, W, C]
    pos = frame_positions(4, segments)  # [B, F]: 0 1 0 0 / 0 1 2 3
    tokens = tokens + layer.frame_pos(sinusoidal(pos, layer.POSITION_FEATURES))[:, :, None, None]
    ref = naive_attention(tokens.reshape(2, 24, 8), layer, bias).reshape(2, 4, 2, 3, 8).permute(0, 4, 1, 2, 3)
    torch.testing.assert_close(layer(x, cond), x + ref, rtol=1e-5, atol=1e-5)


def test_spacetime_attention_reads_other_positions_of_other_frames_and_no_other_segment():
    """A poke at one position of frame 1 reaches another position of frame 0 (temporal attention links
    only the same position), but not the frames of another segment."""
    x = torch.randn(1, 8, 4, 3, 3)
    poked = x.clone()
    poked[:, :, 1, 0, 0] += 1.0
    joint = randomize(SpacetimeAttention(8, head_dim=4, norm_groups=2))
    factorized = randomize(TemporalAttention(8, head_dim=4, norm_groups=2))
    joint.norm = factorized.norm = torch.nn.Identity()  # a frame's norm statistics would carry the poke too
    assert (joint(poked) - joint(x))[:, :, 0, 2, 2].abs().max() > 1e-3
    assert (factorized(poked) - factorized(x))[:, :, 0, 2, 2].abs().max() == 0
    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 1, 1]]))
    change = (joint(poked, cond) - joint(x, cond)).abs().amax(dim=(0, 1, 3, 4))
    assert change[0] > 1e-3 and change[2] == 0 and change[3] == 0
