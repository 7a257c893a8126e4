"""Factorized space-time attention on ``torch.nn.functional.scaled_dot_product_attention``.

VDM (Ho, Salimans et al. 2022, section 3) follows each spatial attention block (tokens = the H*W
positions of one frame) with a temporal attention block (tokens = the F frames at one position),
the latter with a learned relative position bias over frame offsets. No score matrix is ever built
here: SDPA picks the flash / memory-efficient / math kernel.

Temporal attention bias without materializing it per position
--------------------------------------------------------------
The bias (relative position + segment mask) is ``[B, heads, F, F]``: it varies with the batch item
and the head but not with the spatial position. q, k, v are laid out as
``[(B heads), H*W, F, d]`` — SDPA's "heads" axis carries the spatial positions — so the bias enters
as ``[(B heads), 1, F, F]`` expanded over H*W with stride 0: O(B heads F^2) memory, no copy, and
the inputs stay 4-D so the fused memory-efficient kernel (which takes an additive bias) applies.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from kinema.models.blocks import ResidualBranch, frame_positions, group_norm, sinusoidal_embedding

# ---- relative position bias and frame masking ---------------------------------------------------


def relative_position_bucket(relative: Tensor, num_buckets: int = 32, max_distance: int = 32) -> Tensor:
    """Bidirectional T5 bucketing of signed offsets ``relative = j - i`` (Raffel et al. 2020, 2.1).

    Half the buckets per sign; within a sign, offsets below ``num_buckets // 4`` get a bucket each,
    larger ones share logarithmically spaced buckets up to ``max_distance`` (and beyond: clamped).
    """
    half = num_buckets // 2
    exact = half // 2
    n = relative.abs()
    log_ratio = torch.log(n.float().clamp_min(1.0) / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (half - exact)).long()).clamp_max(half - 1)
    return (relative > 0).long() * half + torch.where(n < exact, n, far)


class RelativePositionBias(nn.Module):
    """Learned per-head additive bias ``b[h, bucket(j - i)]`` -> ``[heads, F, F]`` (query i, key j)."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32) -> None:
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, frames: int, device: Optional[torch.device] = None) -> Tensor:
        pos = torch.arange(frames, device=device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return rearrange(self.embedding(buckets), "i j h -> h i j")  # [heads, F, F]


def frame_attention_bias(frame_segments: Optional[Tensor], rel_bias: Tensor) -> Tensor:
    """Additive temporal-attention bias ``[B|1, heads, F, F]`` (query i, key j).

    ``rel_bias [heads, F, F]`` plus, where ``frame_segments [B, F]`` (long) is given, ``-inf`` wherever
    ``frame_segments[b, i] != frame_segments[b, j]``: joint image-video training (VDM section 3)
    appends independent images as frames with segments of their own, and no information may flow
    between segments. Every frame is in its own segment, so no row is fully masked (no NaN).
    ``frame_segments=None`` (one clip per item) gives ``[1, heads, F, F]``.
    """
    bias = rel_bias[None]  # [1, heads, F, F]
    if frame_segments is None:
        return bias
    different = frame_segments[:, :, None] != frame_segments[:, None, :]  # [B, F, F]
    return bias.masked_fill(different[:, None], float("-inf"))  # [B, heads, F, F]


def _stride0_bias(bias: Tensor, batch: int, positions: int, dtype: torch.dtype) -> Tensor:
    """``[B|1, heads, F, F]`` -> ``[(B heads), positions, F, F]`` with stride 0 over positions.

    The storage's last dimension is padded to a multiple of 16 first, so the memory-efficient SDPA
    kernel finds its alignment and does not pad (which would materialize the expanded tensor)."""
    _, heads, f, _ = bias.shape
    bias = bias.to(dtype).expand(batch, heads, f, f)
    bias = F.pad(bias, (0, -f % 16))[..., :f]  # [B, heads, F, F] over padded storage (tiny)
    return bias.reshape(batch * heads, 1, f, f).expand(-1, positions, -1, -1)


# ---- attention layers ---------------------------------------------------------------------------


class _Attention(ResidualBranch):
    """Pre-norm multi-head attention branch: ``heads = max(1, channels // head_dim)`` and the
    per-frame GroupNorm ``norm`` of the queries' input; subclasses add the projections and ``out``
    (zero-initialized by :func:`~kinema.models.blocks.zero_init_residual_outputs`)."""

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"attention over {channels} channels cannot be split into {self.heads} heads "
                             f"(head_dim={head_dim}); choose channels divisible by channels // head_dim")
        self.norm = group_norm(channels, norm_groups)


class _SelfAttention(_Attention):
    """Pre-norm multi-head self-attention, ``x + out(attn(GN(x)))``."""

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32) -> None:
        super().__init__(channels, head_dim, norm_groups)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)


class SpatialAttention(_SelfAttention):
    """Self-attention over the H*W positions of each frame (``'b c f h w -> (b f) (h w) c'``);
    frames are independent here, so ``cond`` is unused. ``x [B, C, F, H, W]``."""

    def forward(self, x: Tensor, cond=None) -> Tensor:
        b, c, f, h, w = x.shape
        tokens = rearrange(self.norm(x), "b c f h w -> (b f) (h w) c")
        q, k, v = rearrange(self.qkv(tokens), "n l (three heads d) -> three n heads l d", three=3, heads=self.heads)
        o = F.scaled_dot_product_attention(q, k, v)  # [(B F), heads, HW, d]
        o = self.out(rearrange(o, "n heads l d -> n l (heads d)"))  # [(B F), HW, C]
        return x + rearrange(o, "(b f) (h w) c -> b c f h w", b=b, f=f, h=h)


class TemporalAttention(_SelfAttention):
    """Self-attention over the F frames at each spatial position (``'b c f h w -> b (h w) f c'``) with a
    learned T5-style relative position bias per head and segment masking from
    ``cond.frame_segments`` (see :func:`frame_attention_bias` and the module docstring for the
    layout that keeps the bias O(B heads F^2)). ``x [B, C, F, H, W]``."""

    POSITION_FEATURES = 32  # sinusoidal features of the frame index fed to ``frame_pos``

    def __init__(self, channels: int, head_dim: int = 32, norm_groups: int = 32,
                 num_buckets: int = 32, max_distance: int = 32, frame_position: bool = False) -> None:
        super().__init__(channels, head_dim, norm_groups)
        self.rel_pos = RelativePositionBias(self.heads, num_buckets, max_distance)
        # Optional absolute frame index (Video LDM, Blattmann et al. 2023, adds a sinusoidal encoding of the
        # frame index to its temporal layers' input): the relative bias alone tells a frame who its
        # neighbours are, not where in the clip it is
        self.frame_pos = nn.Linear(self.POSITION_FEATURES, channels) if frame_position else None

    def _frame_embedding(self, frames: int, segments: Optional[Tensor], like: Tensor) -> Tensor:
        """``frame_pos`` of each frame's index in its segment: ``[1|B, F, C]`` in ``like``'s dtype."""
        pos = frame_positions(frames, segments, like.device)  # [1|B, F]
        emb = sinusoidal_embedding(pos.flatten(), self.POSITION_FEATURES, max_period=100.0)
        return self.frame_pos(emb.to(like.dtype)).reshape(pos.shape[0], frames, -1)

    def forward(self, x: Tensor, cond=None) -> Tensor:
        b, c, f, h, w = x.shape
        segments = getattr(cond, "frame_segments", None)
        tokens = rearrange(self.norm(x), "b c f h w -> b (h w) f c")
        if self.frame_pos is not None:
            tokens = tokens + self._frame_embedding(f, segments, tokens)[:, None]
        q, k, v = rearrange(self.qkv(tokens), "b l f (three heads d) -> three (b heads) l f d",
                            three=3, heads=self.heads)  # each [(B heads), HW, F, d]
        bias = _stride0_bias(frame_attention_bias(segments, self.rel_pos(f, x.device)), b, h * w, q.dtype)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [(B heads), HW, F, d]
        o = self.out(rearrange(o, "(b heads) l f d -> b l f (heads d)", b=b))  # [B, HW, F, C]
        return x + rearrange(o, "b (h w) f c -> b c f h w", h=h)


class SpacetimeAttention(TemporalAttention):
    """Joint self-attention over all F*H*W positions of a clip (``'b c f h w -> b (f h w) c'``), the
    full space-time attention that W.A.L.T's spatiotemporal windows take at the size of the whole
    clip: a moving object's tokens in one frame read its tokens in every other frame wherever they
    are, where factorized temporal attention links only the same position across frames. The scores carry
    the temporal relative position bias (per pair of frames, the same for every pair of positions)
    and, with ``frame_position``, queries and keys carry the frame index; segments of
    ``cond.frame_segments`` stay masked from each other. The bias is materialized as
    ``[B|1, heads, FHW, FHW]``, so this is meant for coarse levels (a few hundred tokens)."""

    def forward(self, x: Tensor, cond=None) -> Tensor:
        f, h, w = x.shape[2:]
        segments = getattr(cond, "frame_segments", None)
        tokens = rearrange(self.norm(x), "b c f h w -> b f (h w) c")
        if self.frame_pos is not None:
            tokens = tokens + self._frame_embedding(f, segments, tokens)[:, :, None]
        q, k, v = rearrange(self.qkv(tokens), "b f l (three heads d) -> three b heads (f l) d",
                            three=3, heads=self.heads)  # each [B, heads, FHW, d]
        bias = frame_attention_bias(segments, self.rel_pos(f, x.device)).to(q.dtype)  # [B|1, heads, F, F]
        bias = repeat(bias, "b heads i j -> b heads (i p) (j q)", p=h * w, q=h * w)  # [B|1, heads, FHW, FHW]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, heads, FHW, d]
        o = self.out(rearrange(o, "b heads l d -> b l (heads d)"))  # [B, FHW, C]
        return x + rearrange(o, "b (f h w) c -> b c f h w", f=f, h=h)


class TextCrossAttention(_Attention):
    """Cross-attention from video positions to text tokens, ``x + out(attn(q = GN(x), k, v = text))``
    (Imagen, Saharia et al. 2022, section 2.1 and appendix; Imagen Video, Ho et al. 2022, section 2:
    the U-Net attends to the frozen text encoder's token embeddings).

    Every position of every frame is a query (``'b c f h w -> b (f h w) c'``: queries are independent,
    so frames do not mix here); keys / values are a learned *null token* followed by the text tokens
    ``cond.text_emb [B, L, text_dim]`` where ``cond.text_mask [B, L]`` is True. The null token is
    always attended, so a fully masked text (the unconditional input of classifier-free guidance, see
    :func:`kinema.conditioning.drop_conditioning`) or no text at all is well defined and never NaN:
    it gives exactly the null token's value everywhere. ``x [B, C, F, H, W]``.
    """

    def __init__(self, channels: int, text_dim: int, head_dim: int = 32, norm_groups: int = 32) -> None:
        super().__init__(channels, head_dim, norm_groups)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.null_kv = nn.Parameter(torch.randn(2, channels) * channels ** -0.5)  # the null token's k, v
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, cond=None) -> Tensor:
        b, c, f, h, w = x.shape
        q = rearrange(self.q(rearrange(self.norm(x), "b c f h w -> b (f h w) c")), "b n (heads d) -> b heads n d",
                      heads=self.heads)  # [B, heads, F*H*W, d]
        null = self.null_kv.to(q.dtype)[:, None, None, :].expand(2, b, 1, c)  # [2, B, 1, C]
        text = getattr(cond, "text_emb", None)
        mask = None
        if text is None:
            k, v = null[0], null[1]  # only the null token: [B, 1, C]
        else:
            kv = self.kv(text.to(q.dtype)).unflatten(-1, (2, c)).movedim(2, 0)  # [2, B, L, C]
            k, v = torch.cat([null, kv], dim=2).unbind(0)  # each [B, 1 + L, C]
            text_mask = getattr(cond, "text_mask", None)
            if text_mask is not None:
                always = torch.ones(b, 1, dtype=torch.bool, device=x.device)
                mask = torch.cat([always, text_mask.to(x.device, torch.bool)], dim=1)[:, None, None, :]  # [B,1,1,1+L]
        k, v = (rearrange(t, "b l (heads d) -> b heads l d", heads=self.heads) for t in (k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, heads, F*H*W, d]
        o = self.out(rearrange(o, "b heads n d -> b n (heads d)"))
        return x + rearrange(o, "b (f h w) c -> b c f h w", f=f, h=h)
