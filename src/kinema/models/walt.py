"""W.A.L.T: the window-attention latent video transformer backbone.

Gupta et al. 2023, "Photorealistic Video Generation with Diffusion Models" (W.A.L.T), section 3:

- z ``[B, C, F, H, W]`` is cut into non-overlapping ``pt x ph x pw`` patches (default 1x2x2: over H, W
  only, section 3.2) and linearly embedded into a token grid ``[B, T, Hp, Wp, D]``;
- position embeddings are factorized (section 3.2): a fixed 2D sine-cosine embedding over (Hp, Wp),
  computed for any size, plus a *learned* temporal embedding (``max_frames`` rows, so any number of
  token frames up to that works). The temporal index counts frames *within* the frame's
  ``frame_segments`` segment, so an appended independent image sits at position 0 like an image;
- blocks alternate (section 3.3) **spatial window attention** (windows ``1 x sh x sw`` inside one
  frame; default the whole frame) and **spatiotemporal window attention** (non-overlapping
  ``t x h x w`` windows across frames; 0 in a dimension = the whole extent);
- conditioning (section 3.4): adaptive layer norm from the shared
  :class:`~kinema.models.embeddings.ConditioningEmbedding` (noise level + class + pooled text).
  ``adaln_lora_rank = 0`` is plain per-block AdaLN (DiT); ``> 0`` is the paper's AdaLN-LoRA:
  one shared ``A = W c`` for all blocks plus a per-block rank-r term ``A_i = A + W_b^i W_a^i c``
  (eq. in section 3.4), which saves most of the modulation parameters;
- qk-normalization (LayerNorm over each head's q and k; Dehghani et al. 2023, used by W.A.L.T) as an
  option; text cross-attention after self-attention when ``text_dim > 0``.

Joint image-video training (section 3.1 / 5): frames of different ``cond.frame_segments`` segments
never exchange information. Spatial windows never cross frames; inside spatiotemporal windows, and
only when ``frame_segments`` is given, SDPA gets a boolean mask built per window from the segment ids
(token i may attend to token j iff their frames share a segment). Without segments no mask is built.

Self-conditioning (Chen et al. 2022, "Analog Bits", section 3; used by W.A.L.T, section 4): with
``self_condition`` the patch embedding takes ``[z, x_hat]`` (2C channels), ``x_hat = cond.self_cond``
the previous estimate of the clean z, zeros when absent. The spec declares ``reads = (..., "self_cond")``;
the objective (:func:`kinema.diffusion.objective.self_conditioned`) and the sampling pipelines
(:class:`kinema.pipelines.sample.SamplingNet`) supply the estimate. Without the flag a given
``cond.self_cond`` is refused.

Super-resolution stages and context frames (the SR path of Imagen Video, ``diffusion/superres.py``,
one path for every backbone): with ``extra_in_channels > 0`` the patch embedding also takes the channels
of :func:`~kinema.models.embeddings.conditioning_channels`, exactly as the U-Net's first convolution
does: ``cond.lowres`` brought to z's frames (repeated) and size (bilinear), or the known
``cond.context`` frames and their mask. ``scalar_conditions`` (e.g. ``lowres_logsnr``, the level of the
conditioning augmentation, Ho et al. 2022, section 2.5) are embedded like the noise level and so reach
every block through AdaLN. The spec declares them in ``reads``, so ``check_sr_config``, the
``LowResInput`` objective hook and ``kinema cascade`` / ``kinema upsample`` treat W.A.L.T like the U-Net.

Every block starts as the identity (zero-initialized AdaLN gates) and the output layer is
zero-initialized, so a fresh model outputs exactly 0. Not here: the causal 3D autoencoder and the
latent space (``models/autoencoder.py``, ``spaces.py``).

Attention cost: every window attention is a reshape (:func:`window_partition`) + one
``F.scaled_dot_product_attention`` call without a mask, so fused (flash / memory-efficient) kernels
apply. The one mask is the segment mask of joint image-video batches (``cond.frame_segments`` given),
built per window: ``[(B n), 1, N, N]`` booleans for windows of N tokens, i.e. B*T*H*W*N bytes, not a
full ``[L, L]`` matrix; with it SDPA uses the memory-efficient kernel (flash takes no mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kinema.models.backbone import BackboneSpec, with_estimate
from kinema.models.blocks import frame_positions, sinusoidal_embedding
from kinema.models.embeddings import SCALAR_CONDITIONS, ConditioningEmbedding, conditioning_channels


@dataclass
class WALTConfig:
    """Configuration of :class:`WALT` (section ``model.walt``). Window sizes count *tokens* (after
    patching); 0 in a window dimension means the whole extent of that dimension."""

    in_channels: int = 3  # channels of z (3 in pixel space; the W.A.L.T latent space is not built yet)
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    hidden_dim: int = 256
    depth: int = 4  # number of blocks, alternating spatial / spatiotemporal; must be even
    heads: int = 4
    mlp_ratio: float = 4.0
    spatial_window: tuple[int, int] = (0, 0)  # (h, w); (0, 0): the whole latent frame
    spatiotemporal_window: tuple[int, int, int] = (0, 4, 4)  # (t, h, w); t=0: all frames
    max_frames: int = 64  # rows of the learned temporal position embedding (token frames)
    num_classes: int = 0
    text_dim: int = 0  # > 0: cross-attention to cond.text_emb + pooled text in AdaLN
    adaln_lora_rank: int = 0  # 0: plain AdaLN per block; > 0: shared AdaLN + per-block rank-r term
    qk_norm: bool = True
    gradient_checkpointing: bool = False  # activation checkpointing per block (recompute in backward)
    self_condition: bool = False  # take the previous estimate cond.self_cond as C extra input channels
    extra_in_channels: int = 0  # channels from cond (lowres / context) concatenated to z before patch embedding
    scalar_conditions: tuple[str, ...] = ()  # embedded cond fields (AdaLN): lowres_logsnr | guidance_weight | fps

    def __post_init__(self) -> None:
        self.patch_size = tuple(self.patch_size)
        self.spatial_window = tuple(self.spatial_window)
        self.spatiotemporal_window = tuple(self.spatiotemporal_window)
        self.scalar_conditions = tuple(self.scalar_conditions)
        unknown = sorted(set(self.scalar_conditions) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"WALTConfig.scalar_conditions has unknown names {unknown}; valid: "
                             f"{', '.join(sorted(SCALAR_CONDITIONS))}")
        positive = {"in_channels": self.in_channels, "hidden_dim": self.hidden_dim, "depth": self.depth,
                    "heads": self.heads, "max_frames": self.max_frames}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"WALTConfig.{name} must be >= 1, got {value}")
        for name, value in {"num_classes": self.num_classes, "text_dim": self.text_dim,
                            "adaln_lora_rank": self.adaln_lora_rank, "extra_in_channels": self.extra_in_channels}.items():
            if value < 0:
                raise ValueError(f"WALTConfig.{name} must be >= 0, got {value}")
        if self.depth % 2:
            raise ValueError(f"WALTConfig.depth must be even (blocks alternate spatial / spatiotemporal), "
                             f"got {self.depth}")
        if self.hidden_dim % self.heads:
            raise ValueError(f"WALTConfig.hidden_dim={self.hidden_dim} is not divisible by heads={self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"WALTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"WALTConfig.patch_size must be 3 positive ints (t, h, w), got {self.patch_size}")
        if len(self.spatial_window) != 2 or min(self.spatial_window) < 0:
            raise ValueError(f"WALTConfig.spatial_window must be 2 ints >= 0 (h, w), got {self.spatial_window}")
        if len(self.spatiotemporal_window) != 3 or min(self.spatiotemporal_window) < 0:
            raise ValueError(f"WALTConfig.spatiotemporal_window must be 3 ints >= 0 (t, h, w), "
                             f"got {self.spatiotemporal_window}")


# ---- windows ------------------------------------------------------------------------------------


def window_partition(x: Tensor, window: tuple[int, int, int]) -> Tensor:
    """Non-overlapping 3D windows of a token grid: ``x [B, T, H, W, D]`` -> ``[(B nT nH nW), t*h*w, D]``
    for ``window = (t, h, w)`` (a pure reshape; tokens in a window are ordered ``t h w``)."""
    _, T, H, W, _ = x.shape
    t, h, w = window
    if T % t or H % h or W % w:
        raise ValueError(f"token grid {T}x{H}x{W} (frames x height x width) is not divisible into "
                         f"windows of {t}x{h}x{w}")
    return rearrange(x, "b (nt t) (nh h) (nw w) d -> (b nt nh nw) (t h w) d", t=t, h=h, w=w)


def window_merge(windows: Tensor, window: tuple[int, int, int], grid: tuple[int, int, int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``[(B nT nH nW), t*h*w, D]`` -> ``[B, T, H, W, D]`` for
    ``grid = (B, T, H, W)``."""
    b, T, H, W = grid
    t, h, w = window
    if T % t or H % h or W % w:
        raise ValueError(f"token grid {T}x{H}x{W} (frames x height x width) is not divisible into "
                         f"windows of {t}x{h}x{w}")
    return rearrange(windows, "(b nt nh nw) (t h w) d -> b (nt t) (nh h) (nw w) d",
                     b=b, nt=T // t, nh=H // h, t=t, h=h, w=w)


def resolve_window(window: tuple[int, int, int], grid: tuple[int, int, int]) -> tuple[int, int, int]:
    """A window with 0 entries replaced by the grid's extent in that dimension."""
    return tuple(g if k == 0 else k for k, g in zip(window, grid))


def segment_window_mask(segments: Tensor, grid: tuple[int, int, int], window: tuple[int, int, int]) -> Tensor:
    """Boolean SDPA mask ``[(B n), 1, N, N]`` (True = may attend): tokens of a window attend to each
    other only when their frames share a ``frame_segments [B, T]`` segment. Every token sees itself,
    so no row is fully masked."""
    T, H, W = grid
    ids = segments[:, :, None, None, None].expand(-1, T, H, W, 1)  # [B, T, H, W, 1]
    ids = window_partition(ids, window)[..., 0]  # [(B n), N]
    return (ids[:, :, None] == ids[:, None, :])[:, None]


# ---- layers -------------------------------------------------------------------------------------


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows of ``x [B, T, H, W, D]``, on SDPA,
    with optional qk-normalization (LayerNorm over each head's q and k)."""

    def __init__(self, dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, window: tuple[int, int, int], segments: Optional[Tensor] = None) -> Tensor:
        b, T, H, W, _ = x.shape
        windows = window_partition(x, window)  # [(B n), N, D]
        q, k, v = rearrange(self.qkv(windows), "n l (three heads d) -> three n heads l d", three=3,
                            heads=self.heads)  # each [(B n), heads, N, d]
        q, k = self.q_norm(q), self.k_norm(k)
        mask = None if segments is None else segment_window_mask(segments, (T, H, W), window)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [(B n), heads, N, d]
        o = self.out(rearrange(o, "n heads l d -> n l (heads d)"))
        return window_merge(o, window, (b, T, H, W))


class TokenTextCrossAttention(nn.Module):
    """Cross-attention from tokens ``x [B, L, D]`` to a learned null token + the text tokens
    ``cond.text_emb`` where ``cond.text_mask``; the null token is always attended, so an all-masked
    or absent text gives exactly the null token's value (never NaN), as in
    :class:`~kinema.models.attention.TextCrossAttention` (which works on ``[B, C, F, H, W]`` maps)."""

    def __init__(self, dim: int, text_dim: int, heads: int, qk_norm: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim) * dim ** -0.5)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, cond) -> Tensor:
        b, _, d = x.shape
        q = rearrange(self.q(self.norm(x)), "b l (heads e) -> b heads l e", heads=self.heads)
        null = self.null_kv.to(x.dtype)[:, None, None, :].expand(2, b, 1, d)  # [2, B, 1, D]
        text, mask = getattr(cond, "text_emb", None), None
        if text is None:
            k, v = null[0], null[1]  # [B, 1, D]
        else:
            kv = self.kv(text.to(x.dtype)).unflatten(-1, (2, d)).movedim(2, 0)  # [2, B, Lt, D]
            k, v = torch.cat([null, kv], dim=2).unbind(0)  # [B, 1 + Lt, D]
            text_mask = getattr(cond, "text_mask", None)
            if text_mask is not None:
                always = torch.ones(b, 1, dtype=torch.bool, device=x.device)
                mask = torch.cat([always, text_mask.to(x.device, torch.bool)], 1)[:, None, None, :]
        k, v = (rearrange(t, "b l (heads e) -> b heads l e", heads=self.heads) for t in (k, v))
        o = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v, attn_mask=mask)
        return self.out(rearrange(o, "b heads l e -> b l (heads e)"))  # [B, L, D]


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """AdaLN: ``x * (1 + scale) + shift``; ``x [B, ..., D]``, ``shift, scale [B, D]``."""
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


class WALTBlock(nn.Module):
    """One transformer block: AdaLN + window self-attention (gated), text cross-attention, AdaLN + MLP
    (gated). ``spatiotemporal`` selects which window the block uses (and whether segments matter)."""

    def __init__(self, cfg: WALTConfig, spatiotemporal: bool) -> None:
        super().__init__()
        d = cfg.hidden_dim
        self.spatiotemporal = spatiotemporal
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = WindowAttention(d, cfg.heads, cfg.qk_norm)
        self.cross = TokenTextCrossAttention(d, cfg.text_dim, cfg.heads, cfg.qk_norm) if cfg.text_dim else None
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, d))
        r = cfg.adaln_lora_rank
        # plain AdaLN: its own map c -> 6D; AdaLN-LoRA: a rank-r correction to the shared 6D modulation
        self.adaln = nn.Linear(d, 6 * d) if r == 0 else nn.Sequential(nn.Linear(d, r, bias=False),
                                                                     nn.Linear(r, 6 * d, bias=False))

    def forward(self, x: Tensor, c: Tensor, shared: Optional[Tensor], window, segments, cond) -> Tensor:
        """``x [B, T, H, W, D]``, ``c [B, D]`` (SiLU'ed embedding), ``shared [B, 6D]`` or None."""
        mod = self.adaln(c) if shared is None else shared + self.adaln(c)  # [B, 6D]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
        gate = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        h = self.attn(modulate(self.norm1(x), shift1, scale1), window, segments if self.spatiotemporal else None)
        x = x + gate1.view(gate) * h
        if self.cross is not None:
            b, T, H, W, d = x.shape
            x = x + self.cross(x.reshape(b, T * H * W, d), cond).view(b, T, H, W, d)
        return x + gate2.view(gate) * self.mlp(modulate(self.norm2(x), shift2, scale2))


def sincos_2d(h: int, w: int, dim: int, device=None) -> Tensor:
    """Fixed 2D sine-cosine position embedding ``[h, w, dim]``: half the channels encode the row, half
    the column (ViT / MAE style), for any size."""
    rows = sinusoidal_embedding(torch.arange(h, device=device, dtype=torch.float32), dim // 2)  # [h, dim/2]
    cols = sinusoidal_embedding(torch.arange(w, device=device, dtype=torch.float32), dim - dim // 2)
    return torch.cat([rows[:, None, :].expand(h, w, -1), cols[None, :, :].expand(h, w, -1)], dim=-1)


class WALT(nn.Module):
    """The W.A.L.T transformer (module docstring), called as ``net(z_t, logsnr, cond) -> output``."""

    def __init__(self, cfg: WALTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        # [z, x_hat] with self-conditioning, then the extra channels from cond (lowres / context)
        inputs = cfg.in_channels * (2 if cfg.self_condition else 1) + cfg.extra_in_channels
        self.patch_embed = nn.Conv3d(inputs, d, cfg.patch_size, stride=cfg.patch_size)
        self.temporal_pos = nn.Parameter(torch.randn(cfg.max_frames, d) * 0.02)  # learned, [T_max, D]
        self.embedding = ConditioningEmbedding(d, d, num_classes=cfg.num_classes, text_dim=cfg.text_dim,
                                               scalars=cfg.scalar_conditions)
        self.shared_adaln = nn.Linear(d, 6 * d) if cfg.adaln_lora_rank else None
        self.blocks = nn.ModuleList(WALTBlock(cfg, spatiotemporal=bool(i % 2)) for i in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.adaln_out = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, math.prod(cfg.patch_size) * cfg.in_channels)
        self.zero_init()

    def zero_init(self) -> None:
        """Every block starts as the identity (gates 0) and the output is exactly 0 (DiT / W.A.L.T);
        optional scalar-condition embeddings start as no-ops."""
        self.embedding.zero_init()
        for block in self.blocks:
            last = block.adaln if isinstance(block.adaln, nn.Linear) else block.adaln[-1]
            nn.init.zeros_(last.weight)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
            if block.cross is not None:
                nn.init.zeros_(block.cross.out.weight)
                nn.init.zeros_(block.cross.out.bias)
        for layer in (self.shared_adaln, self.adaln_out, self.out):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    @property
    def spec(self) -> BackboneSpec:
        cfg = self.cfg
        pt, ph, pw = cfg.patch_size
        st, sth, stw = cfg.spatiotemporal_window
        mult_h = ph * math.lcm(cfg.spatial_window[0] or 1, sth or 1)
        mult_w = pw * math.lcm(cfg.spatial_window[1] or 1, stw or 1)
        reads = (["frame_segments"] + (["text"] if cfg.text_dim else []) + (["class_labels"] if cfg.num_classes else [])
                 + (["self_cond"] if cfg.self_condition else []) + (["lowres", "context"] if cfg.extra_in_channels else [])
                 + list(cfg.scalar_conditions))
        return BackboneSpec(in_channels=cfg.in_channels, out_channels=cfg.in_channels, text_dim=cfg.text_dim,
                            extra_in_channels=cfg.extra_in_channels,
                            num_classes=cfg.num_classes, size_multiple=math.lcm(mult_h, mult_w),
                            frame_multiple=pt * (st or 1), min_frames=pt * (st or 1), reads=tuple(reads))

    def with_estimate(self, z: Tensor, x_hat: Optional[Tensor]) -> Tensor:
        """The patch embedding's input: ``z`` alone, or with ``self_condition`` ``[z, x_hat]`` on channels
        (:func:`~kinema.models.backbone.with_estimate`)."""
        return with_estimate(z, x_hat, self.cfg.self_condition, "model.walt.self_condition")

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        cfg = self.cfg
        if z.dim() != 5 or z.shape[1] != cfg.in_channels:
            raise ValueError(f"WALT expects z of shape [B, {cfg.in_channels}, F, H, W], got {tuple(z.shape)}")
        b, _, f, h, w = z.shape
        self.spec.check_video_shape(f, h, w, what="input z")
        pt, ph, pw = cfg.patch_size
        T, H, W = f // pt, h // ph, w // pw
        if T > cfg.max_frames:
            raise ValueError(f"WALT has temporal position embeddings for {cfg.max_frames} token frames "
                             f"(model.walt.max_frames); z has {f} frames = {T} token frames")
        z_in = self.with_estimate(z, getattr(cond, "self_cond", None))  # [B, C or 2C, F, H, W]
        extra = conditioning_channels(z, cond, cfg.extra_in_channels, "WALT")  # [B, extra, F, H, W] or None
        if extra is not None:
            z_in = torch.cat([z_in, extra], dim=1)
        segments = getattr(cond, "frame_segments", None)
        if segments is not None:
            if pt > 1 and segments.device.type == "cpu":  # (no host sync on GPU, like ClassEmbedding)
                split = segments.unflatten(1, (T, pt))  # [B, T, pt]
                if (split != split[..., :1]).any():
                    raise ValueError(f"frame_segments {segments.tolist()} put frames of different segments "
                                     f"into one temporal patch of {pt} frames (patch_size[0])")
            segments = segments.to(z.device)[:, ::pt]  # [B, T]: a temporal patch lies in one segment
        cond = self.embedding.normalize_text(cond)
        c = F.silu(self.embedding(logsnr.to(z.device), cond, b))  # [B, D]
        shared = None if self.shared_adaln is None else self.shared_adaln(c)  # [B, 6D]

        x = rearrange(self.patch_embed(z_in), "b d t h w -> b t h w d")  # [B, T, H, W, D]
        x = x + sincos_2d(H, W, cfg.hidden_dim, z.device).to(x.dtype)
        frame_pos = frame_positions(T, segments, z.device).expand(b, T)
        x = x + self.temporal_pos[frame_pos][:, :, None, None, :].to(x.dtype)  # [B, T, 1, 1, D]

        spatial = resolve_window((1, *cfg.spatial_window), (T, H, W))
        spatiotemporal = resolve_window(cfg.spatiotemporal_window, (T, H, W))
        for block in self.blocks:
            window = spatiotemporal if block.spatiotemporal else spatial
            if cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, shared, window, segments, cond, use_reentrant=False)
            else:
                x = block(x, c, shared, window, segments, cond)

        shift, scale = self.adaln_out(c).chunk(2, dim=1)
        x = self.out(modulate(self.norm_out(x), shift, scale))  # [B, T, H, W, pt*ph*pw*C]
        return rearrange(x, "b t h w (pt ph pw c) -> b c (t pt) (h ph) (w pw)", pt=pt, ph=ph, pw=pw)


__all__ = ["WALT", "WALTBlock", "WALTConfig", "WindowAttention", "TokenTextCrossAttention",
           "resolve_window", "segment_window_mask", "sincos_2d", "window_merge", "window_partition"]
