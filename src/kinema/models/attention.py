"""Attention layers on ``torch.nn.functional.scaled_dot_product_attention``.

No score matrix is ever built in Python: SDPA picks the flash / memory-efficient / math kernel.
VDM (Ho et al. 2022, section 3) factorizes space-time attention: spatial attention within each
frame, then temporal attention across frames at each spatial position, with a relative position
bias over frame offsets.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are computed per frame: over (C / G, H, W), never across frames.

    A plain GroupNorm on ``[B, C, F, H, W]`` pools statistics over all frames, which leaks
    information between the independent images of joint image-video training (VDM section 3) and
    makes an image's output depend on the frames it is batched with. Per-frame statistics keep
    frames independent everywhere except in temporal layers, where masking controls the flow.
    Statistics in float32 (safe under bf16 autocast). Accepts ``[B, C, F, H, W]``.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, f, h, w = x.shape
        xg = x.float().reshape(b, self.num_groups, c // self.num_groups, f, h, w)
        var, mean = torch.var_mean(xg, dim=(2, 4, 5), keepdim=True, unbiased=False)
        out = ((xg - mean) * torch.rsqrt(var + self.eps)).reshape(b, c, f, h, w)
        out = out * self.weight[:, None, None, None] + self.bias[:, None, None, None]
        return out.to(x.dtype)


def group_norm(channels: int, groups: int = 32) -> FrameGroupNorm:
    """Per-frame GroupNorm with ``min(groups, channels)`` groups, reduced until it divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return FrameGroupNorm(g, channels, eps=1e-6)


def relative_position_bucket(relative: Tensor, num_buckets: int = 32, max_distance: int = 32) -> Tensor:
    """T5's bucketing of signed offsets j - i (Raffel et al. 2020, section 2.1): half the buckets
    for each sign, exact for small offsets and logarithmic up to ``max_distance``."""
    half = num_buckets // 2
    sign_bucket = (relative > 0).long() * half
    n = relative.abs()
    exact = half // 2
    is_small = n < exact
    log_bucket = exact + (
        torch.log(n.float().clamp_min(1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    log_bucket = log_bucket.clamp_max(half - 1)
    return sign_bucket + torch.where(is_small, n, log_bucket)


class RelativePositionBias(nn.Module):
    """Learned per-head bias b[h, j - i] over frame offsets, bucketed as in T5."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, frames: int, device=None) -> Tensor:
        pos = torch.arange(frames, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return rearrange(self.embedding(buckets), "i j h -> h i j")  # [heads, F, F]


def frame_attention_bias(frame_segments: Optional[Tensor], rel_bias: Tensor) -> Tensor:
    """Additive temporal-attention bias ``[B|1, heads, F, F]``: the relative position bias, and
    -inf where frames i and j belong to different segments (VDM joint image-video training:
    independent images are masked from every other frame). ``frame_segments [B, F]`` long or None;
    ``rel_bias [heads, F, F]``. Every frame sees itself, so no row is fully masked."""
    bias = rel_bias[None]  # [1, heads, F, F]
    if frame_segments is None:
        return bias
    same = frame_segments[:, :, None] == frame_segments[:, None, :]  # [B, F, F]
    blocked = torch.zeros(same.shape, dtype=bias.dtype, device=bias.device).masked_fill(~same, float("-inf"))
    return bias + blocked[:, None]


class _Attention(nn.Module):
    """Pre-norm multi-head self-attention with a zero-initialized output projection (residual)."""

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = group_norm(channels, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def _attend(self, tokens: Tensor, bias: Optional[Tensor]) -> Tensor:
        # tokens [..., N, C] -> q, k, v [..., heads, N, d]
        q, k, v = rearrange(self.qkv(tokens), "... n (three h d) -> three ... h n d", three=3, h=self.heads)
        if bias is not None:
            bias = bias.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(rearrange(out, "... h n d -> ... n (h d)"))


class SpatialAttention(_Attention):
    """Self-attention over the H*W positions of each frame: ``'b c f h w -> (b f) (h w) c'``."""

    def forward(self, x: Tensor, cond=None) -> Tensor:  # x [B, C, F, H, W]
        b, c, f, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c f h w -> (b f) (h w) c")
        out = self._attend(tokens, None)
        return x + rearrange(out, "(b f) (h w) c -> b c f h w", b=b, f=f, h=h)


class TemporalAttention(_Attention):
    """Self-attention over frames at each spatial position (``'b c f h w -> (b h w) f c'``), with
    a relative position bias and segment masking. Without segments the ``[1, heads, F, F]`` bias is
    expanded over positions with stride 0 (no copy); with segments it is ``[B, heads, F, F]``
    repeated over positions (B H W heads F^2 bias entries, small next to the activations).
    q, k, v stay 4-D so SDPA can use its fused kernels."""

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32,
                 num_buckets: int = 32, max_distance: int = 32) -> None:
        super().__init__(channels, head_dim, norm_groups)
        self.rel_pos = RelativePositionBias(self.heads, num_buckets, max_distance)

    def forward(self, x: Tensor, cond=None) -> Tensor:  # x [B, C, F, H, W]
        b, c, f, h, w = x.shape
        segments = getattr(cond, "frame_segments", None) if cond is not None else None
        bias = frame_attention_bias(segments, self.rel_pos(f, x.device))  # [B|1, heads, F, F]
        tokens = rearrange(self.norm(x), "b c f h w -> (b h w) f c")
        if bias.shape[0] == 1:
            mask = bias.expand(b * h * w, -1, -1, -1)
        else:
            mask = bias[:, None].expand(b, h * w, *bias.shape[1:]).reshape(b * h * w, *bias.shape[1:])
        out = self._attend(tokens, mask)
        return x + rearrange(out, "(b h w) f c -> b c f h w", b=b, h=h)
