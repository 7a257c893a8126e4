"""The VDM 3D U-Net (Ho, Salimans et al. 2022, "Video Diffusion Models", section 3 and figure 1).

A 2D image U-Net made a video model by factorizing over space and time: every convolution is
space-only (1x3x3), each spatial attention block is followed by a temporal attention block over
frames (with a relative position bias), down/upsampling act on H and W only, and the noise level
(log-SNR) and an optional class label modulate every residual block (FiLM); text conditions it by
cross-attention plus a pooled embedding (see :class:`UNet3D`). Frames interact only in
temporal layers, and those obey ``Conditioning.frame_segments``, so one batch can mix video clips
and independent images (joint image-video training, VDM section 3). With
``temporal_mixing`` the temporal layer is chosen per level: temporal attention, joint space-time
attention over all F*H*W positions (coarse levels), a temporal
convolution (kernel 3 over frames, zero-initialized residual) or none, so the high-resolution
levels of a super-resolution stage can be convolutional only (Imagen Video, Ho et al. 2022,
section 2.2: its SSR models use temporal convolutions instead of temporal attention, and with
``middle_attention=False`` as well no attention at all, run at any size and frame count).

Denoiser contract (DESIGN.md section 3): ``net(z_t, logsnr, cond) -> output`` in whatever
parameterization the trainer chose; the model never sees the schedule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kinema.models.attention import SpacetimeAttention, SpatialAttention, TemporalAttention, TextCrossAttention
from kinema.models.backbone import BackboneSpec, with_estimate
from kinema.models.blocks import (Downsample, FrameGroupNorm, ResBlock, TemporalConv, Upsample, group_norm, space_conv,
                                  zero_init_residual_outputs)
from kinema.models.embeddings import SCALAR_CONDITIONS, ConditioningEmbedding, conditioning_channels

TEMPORAL_MIXING = ("attention", "spacetime", "conv", "none")  # per-level choices of UNetConfig.temporal_mixing
ATTENTION_MIXING = {"attention": TemporalAttention, "spacetime": SpacetimeAttention}  # the choices that attend


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet3D` (validated on construction; errors name the bad value)."""

    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels
    dim: int = 64  # channels at full resolution; the noise embedding is 4 * dim wide
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)  # channels per level = dim * mult; each level halves H, W
    num_res_blocks: int = 2  # per level on the way down (num_res_blocks + 1 on the way up)
    attn_levels: tuple[int, ...] = (1, 2, 3)  # levels (0 = full resolution) with spatial + temporal attention
    head_dim: int = 32  # heads = max(1, channels // head_dim)
    dropout: float = 0.0
    temporal_attention: bool = True  # False: a TemporalConv after every ResBlock instead (IV SR models)
    # Per level (one entry per dim_mults; () = from temporal_attention): attention | conv | none. attention:
    # temporal attention after each block of the level; conv: a TemporalConv after each block; none: no frame mixing
    # spacetime: joint attention over every position of every frame instead of temporal attention (coarse levels)
    temporal_mixing: tuple[Literal["attention", "spacetime", "conv", "none"], ...] = ()
    middle_attention: bool = True  # spatial (+ temporal, by the last level's mixing) attention in the middle block
    rel_pos_max_distance: int = 32  # T5-style bucketed relative position bias of temporal attention
    rel_pos_buckets: int = 32
    # Temporal attention also reads each frame's index in the clip (sinusoidal -> linear, added to its input, as
    # Video LDM's temporal layers do); off: the relative position bias is its only sense of frame order
    frame_position: bool = False
    num_classes: int = 0  # > 0: class-conditional; a negative label (NULL_LABEL) or none is the null label
    extra_in_channels: int = 0  # channels from cond (lowres / context) concatenated to z before conv_in
    text_dim: int = 0  # > 0: text-conditional on cond.text_emb [B, L, text_dim] (cross-attention + pooled)
    # Levels whose blocks cross-attend to the text (None: the attn_levels; the middle block reads it with its
    # attention either way). A level outside attn_levels gets the cross-attention alone, without spatial
    # self-attention: its keys are the few text tokens, so it is affordable even at full resolution
    text_levels: tuple[int, ...] | None = None
    gradient_checkpointing: bool = False  # torch.utils.checkpoint per block while gradients are on
    norm_groups: int = 32  # GroupNorm groups: gcd(norm_groups, channels), = min(.., channels) if it divides
    # GroupNorm statistics per frame (VDM's factorized model; joint image-video items allowed) or over the whole
    # clip, so every frame is normalized alike (frames then also share information through the statistics)
    norm_stats: Literal["frame", "clip"] = "frame"
    scalar_conditions: tuple[str, ...] = ()  # embedded cond fields: lowres_logsnr | guidance_weight | fps
    # Self-conditioning (Chen et al. 2022): conv_in also takes the previous estimate x_hat (cond.self_cond,
    # in_channels more); the objective and the samplers then feed it (spec reads "self_cond")
    self_condition: bool = False
    # Space-to-depth patches (as simple diffusion, Hoogeboom et al. 2023, section 3.3): conv_in reads each
    # frame's non-overlapping patch_size x patch_size pixel blocks as channels and conv_out writes them back,
    # so the network runs at H / patch_size: a 2x2 patch cuts the cost of every level by ~4x at equal widths
    patch_size: int = 1

    def __post_init__(self) -> None:
        self.dim_mults = tuple(self.dim_mults)
        self.attn_levels = tuple(self.attn_levels)
        self.scalar_conditions = tuple(self.scalar_conditions)
        unknown = sorted(set(self.scalar_conditions) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"UNetConfig.scalar_conditions has unknown names {unknown}; valid: "
                             f"{', '.join(sorted(SCALAR_CONDITIONS))}")
        for name in ("in_channels", "dim", "num_res_blocks", "head_dim", "norm_groups", "rel_pos_max_distance",
                     "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("extra_in_channels", "num_classes", "text_dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"UNetConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"UNetConfig.out_channels must be >= 1 or None, got {self.out_channels}")
        if not self.dim_mults or any(m < 1 for m in self.dim_mults):
            raise ValueError(f"UNetConfig.dim_mults must be non-empty positive ints, got {self.dim_mults}")
        self.temporal_mixing = tuple(self.temporal_mixing)
        if self.temporal_mixing:
            if len(self.temporal_mixing) != len(self.dim_mults):
                raise ValueError(f"UNetConfig.temporal_mixing {self.temporal_mixing} needs one entry per level of "
                                 f"dim_mults {self.dim_mults}")
            bad_mix = [m for m in self.temporal_mixing if m not in TEMPORAL_MIXING]
            if bad_mix:
                raise ValueError(f"UNetConfig.temporal_mixing has unknown entries {bad_mix}; valid: {TEMPORAL_MIXING}")
            if not self.temporal_attention:
                raise ValueError("UNetConfig: set temporal_mixing or temporal_attention=False, not both "
                                 "(temporal_attention=False is temporal_mixing = conv at every level)")
        if self.text_levels is not None:
            self.text_levels = tuple(self.text_levels)
        for name in ("attn_levels", "text_levels"):
            levels = getattr(self, name) or ()
            bad = [a for a in levels if not 0 <= a < len(self.dim_mults)]
            if bad or len(set(levels)) != len(levels):
                raise ValueError(f"UNetConfig.{name} {levels} must be distinct indices into "
                                 f"dim_mults {self.dim_mults} (0..{len(self.dim_mults) - 1})")
        if self.norm_stats not in ("frame", "clip"):
            raise ValueError(f"UNetConfig.norm_stats must be 'frame' or 'clip', got {self.norm_stats!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.rel_pos_buckets < 4 or self.rel_pos_buckets % 2:
            raise ValueError(f"UNetConfig.rel_pos_buckets must be even and >= 4, got {self.rel_pos_buckets}")
        if self.rel_pos_max_distance <= self.rel_pos_buckets // 4:
            raise ValueError(f"UNetConfig.rel_pos_max_distance must exceed rel_pos_buckets // 4 = "
                             f"{self.rel_pos_buckets // 4}, got {self.rel_pos_max_distance}")
        middle = {len(self.dim_mults) - 1} if self.middle_attention else set()
        temporal = {lv for lv, m in enumerate(self.level_mixing()) if m in ATTENTION_MIXING}
        text = set(self.text_levels or ()) if self.text_dim else set()
        for level in set(self.attn_levels) | middle | temporal | text:
            ch = self.dim * self.dim_mults[level]
            heads = max(1, ch // self.head_dim)
            if ch % heads:
                raise ValueError(f"UNetConfig: {ch} channels at level {level} do not split into {heads} heads "
                                 f"of head_dim={self.head_dim}")

    def level_mixing(self) -> tuple[str, ...]:
        """The temporal mixing of each level: ``temporal_mixing`` or, when empty, the VDM default
        (temporal attention where there is spatial attention, else none) / all ``conv`` when
        ``temporal_attention=False``."""
        if self.temporal_mixing:
            return self.temporal_mixing
        if not self.temporal_attention:
            return ("conv",) * len(self.dim_mults)
        return tuple("attention" if level in self.attn_levels else "none" for level in range(len(self.dim_mults)))

    def middle_mixing(self) -> str:
        """Temporal mixing of the middle block: the last level's, except that the VDM default attends."""
        if not self.temporal_mixing:
            return "attention" if self.temporal_attention else "conv"
        return self.temporal_mixing[-1]

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def downsample_factor(self) -> int:
        """What H and W must be multiples of: ``patch_size * 2 ** (len(dim_mults) - 1)``."""
        return self.patch_size * 2 ** (len(self.dim_mults) - 1)


class UNetBlock(nn.Module):
    """One checkpointing unit: a ResBlock (taking the embedding), then layers taking ``(x, cond)``
    (spatial attention, temporal attention / convolution), then optionally an Upsample."""

    def __init__(self, res: Optional[ResBlock], mixers: list[nn.Module], resample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.res = res
        self.mixers = nn.ModuleList(mixers)
        self.resample = resample

    def forward(self, x: Tensor, emb: Tensor, cond=None) -> Tensor:
        if self.res is not None:
            x = self.res(x, emb)
        for mixer in self.mixers:
            x = mixer(x, cond)
        if self.resample is not None:
            x = self.resample(x)
        return x


class UNet3D(nn.Module):
    """VDM space-time factorized 3D U-Net.

    ``forward(z [B, in_channels, F, H, W], logsnr [B], cond: Conditioning | None)
    -> [B, out_channels, F, H, W]``; H and W divisible by ``patch_size * 2 ** (len(dim_mults) - 1)``; any F >= 1.
    Reads ``cond.self_cond`` (if ``self_condition``; missing = zeros), ``cond.class_labels`` (if ``num_classes > 0``; missing = the null label),
    ``cond.text_emb`` + ``cond.text_mask`` (if ``text_dim > 0``; missing = the null text),
    ``cond.frame_segments`` (temporal masking), if ``extra_in_channels > 0`` ``cond.lowres``
    and/or ``cond.context`` (+ ``context_mask``, see
    :func:`~kinema.models.embeddings.conditioning_channels`) and the ``scalar_conditions``. The
    conditioning embedders are the shared :class:`~kinema.models.embeddings.ConditioningEmbedding`.

    Text conditioning (``text_dim > 0``) takes two routes, both as in Imagen (Saharia et al. 2022,
    section 2.1 and appendix), whose U-Net Imagen Video reuses:

    - cross-attention (:class:`~kinema.models.attention.TextCrossAttention`) after every spatial
      attention layer and in the middle block: each position reads the token embeddings, so words
      can act where they apply (a colour on the shape, a direction on its motion). It costs one
      attention over ``1 + L`` keys per attention layer, small next to spatial attention;
    - the masked mean of the tokens, projected and added to the noise embedding (FiLM in every
      ResBlock): a cheap global summary that reaches every block, including those without attention,
      which the tiny CPU-sized models learn from quickly.

    Cross-attention alone would be the faithful Imagen Video choice and pooled alone the cheapest;
    both together cost little and keep token-level detail. Text embeddings are LayerNorm'ed once
    (T5 outputs have large norms). The null text (all-False mask, or no text) is well defined: the
    cross-attention always attends a learned null token and the pooled mean of no tokens is 0.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, emb_dim = cfg.dim, 4 * cfg.dim
        self.embedding = ConditioningEmbedding(dim, emb_dim, num_classes=cfg.num_classes, text_dim=cfg.text_dim,
                                               scalars=cfg.scalar_conditions)
        estimate = cfg.in_channels if cfg.self_condition else 0  # channels of cond.self_cond
        patch = cfg.patch_size ** 2  # pixels per patch: channels are read and written patch by patch
        self.conv_in = space_conv((cfg.in_channels + estimate + cfg.extra_in_channels) * patch, dim)

        levels = len(cfg.dim_mults)
        chans = [dim * m for m in cfg.dim_mults]
        self.down = nn.ModuleList()
        skips, ch = [dim], dim  # channels of every tensor saved for a skip connection
        for level in range(levels):
            for _ in range(cfg.num_res_blocks):
                self.down.append(UNetBlock(self._res(ch, chans[level]), self._level_mixers(chans[level], level)))
                ch = chans[level]
                skips.append(ch)
            if level < levels - 1:
                self.down.append(UNetBlock(None, [], Downsample(ch)))
                skips.append(ch)
        mid = cfg.middle_mixing()
        self.middle = nn.ModuleList([
            UNetBlock(self._res(ch, ch), self._mixers(ch, cfg.middle_attention, mid if cfg.middle_attention or
                                                      mid == "conv" else "none", cfg.middle_attention)),
            UNetBlock(self._res(ch, ch), self._mixers(ch, False, "conv" if mid == "conv" else "none", False)),
        ])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            for i in range(cfg.num_res_blocks + 1):
                upsample = Upsample(chans[level]) if level > 0 and i == cfg.num_res_blocks else None
                self.up.append(UNetBlock(self._res(ch + skips.pop(), chans[level]),
                                         self._level_mixers(chans[level], level), upsample))
                ch = chans[level]
        self.norm_out = group_norm(ch, cfg.norm_groups)
        self.conv_out = space_conv(ch, cfg.output_channels * patch)
        for m in self.modules():
            if isinstance(m, FrameGroupNorm):
                m.over_clip = cfg.norm_stats == "clip"
        self._init_weights()

    # ---- construction ---------------------------------------------------------------------------

    def _res(self, cin: int, cout: int) -> ResBlock:
        return ResBlock(cin, cout, 4 * self.cfg.dim, self.cfg.dropout, self.cfg.norm_groups)

    def _level_mixers(self, ch: int, level: int) -> list[nn.Module]:
        cfg = self.cfg
        text_levels = cfg.attn_levels if cfg.text_levels is None else cfg.text_levels
        return self._mixers(ch, level in cfg.attn_levels, cfg.level_mixing()[level], level in text_levels)

    def _mixers(self, ch: int, attend: bool, temporal: str, read_text: bool) -> list[nn.Module]:
        """Layers after a ResBlock: spatial attention when ``attend``, text cross-attention when
        ``read_text`` and the net is text-conditional, then the ``temporal`` mixing: temporal attention, a
        TemporalConv, or nothing (``none``)."""
        cfg = self.cfg
        layers: list[nn.Module] = [SpatialAttention(ch, cfg.head_dim, cfg.norm_groups)] if attend else []
        if read_text and cfg.text_dim > 0:
            layers.append(TextCrossAttention(ch, cfg.text_dim, cfg.head_dim, cfg.norm_groups))
        if temporal in ATTENTION_MIXING:
            layers.append(ATTENTION_MIXING[temporal](ch, cfg.head_dim, cfg.norm_groups, cfg.rel_pos_buckets,
                                                     cfg.rel_pos_max_distance, cfg.frame_position))
        elif temporal == "conv":
            layers.append(TemporalConv(ch, cfg.norm_groups))
        return layers

    def _init_weights(self) -> None:
        """The one place initialization is decided. Zero-initialized: the last layer of every
        residual branch (``ResBlock.out`` conv, ``SpatialAttention.out`` / ``TemporalAttention.out``
        projections, ``TemporalConv.out``) and the final ``conv_out``. So every block starts as the
        identity (skip path only) and a fresh model outputs exactly 0, while gradients still reach
        every layer through the skip paths (ADM, Dhariwal & Nichol 2021; "Fixup"-style residual
        init). The output layers of optional scalar-condition embeddings are zero too. Everything else keeps PyTorch's default (Kaiming-uniform) initialization."""
        zero_init_residual_outputs(self)
        self.embedding.zero_init()  # optional scalar conditions start as no-ops
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def spec(self) -> BackboneSpec:
        cfg = self.cfg
        # clip-wide GroupNorm statistics mix every frame of an item: joint items' masks are not honoured
        reads = (["frame_segments"] if cfg.norm_stats == "frame" else []) + (["class_labels"] if cfg.num_classes else []) \
            + (["text"] if cfg.text_dim else [])
        if cfg.extra_in_channels:
            reads += ["lowres", "context"]
        if cfg.self_condition:
            reads.append("self_cond")
        return BackboneSpec(in_channels=cfg.in_channels, out_channels=cfg.output_channels,
                            extra_in_channels=cfg.extra_in_channels, text_dim=cfg.text_dim,
                            num_classes=cfg.num_classes, size_multiple=cfg.downsample_factor,
                            reads=tuple(reads + list(cfg.scalar_conditions)))

    # ---- forward --------------------------------------------------------------------------------

    def _check(self, z: Tensor, logsnr: Tensor, cond) -> None:
        cfg = self.cfg
        if z.ndim != 5:
            raise ValueError(f"UNet3D expects z of shape [B, C, F, H, W], got {tuple(z.shape)}")
        if z.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet3D was built for {cfg.in_channels} input channels, got z of shape {tuple(z.shape)}")
        factor = cfg.downsample_factor
        if z.shape[-2] % factor or z.shape[-1] % factor:
            raise ValueError(f"UNet3D needs H and W divisible by {factor} (patch_size * 2 ** (len(dim_mults) - 1)); "
                             f"got z of shape {tuple(z.shape)}")
        if logsnr.shape not in ((z.shape[0],), ()):
            raise ValueError(f"logsnr must have shape [B] = [{z.shape[0]}], got {tuple(logsnr.shape)}")
        segments = getattr(cond, "frame_segments", None)
        if segments is not None and tuple(segments.shape) != (z.shape[0], z.shape[2]):
            raise ValueError(f"cond.frame_segments must have shape [B, F] = {[z.shape[0], z.shape[2]]}, "
                             f"got {tuple(segments.shape)}")
        if cfg.norm_stats == "clip" and segments is not None and bool((segments != segments[:, :1]).any()):
            raise ValueError("model.unet.norm_stats=clip pools GroupNorm statistics over all frames, which would mix "
                             "the independent images of joint items (cond.frame_segments); use norm_stats=frame "
                             "with data.image_fraction > 0")
        text, mask = getattr(cond, "text_emb", None), getattr(cond, "text_mask", None)
        if text is not None and cfg.text_dim == 0:
            raise ValueError("cond.text_emb was given but this UNet3D is not text-conditional (model.unet.text_dim=0)")
        if text is not None and (text.ndim != 3 or text.shape[0] != z.shape[0] or text.shape[2] != cfg.text_dim):
            raise ValueError(f"cond.text_emb must have shape [B, L, text_dim] = [{z.shape[0]}, L, {cfg.text_dim}], "
                             f"got {tuple(text.shape)}")
        if text is not None and mask is not None and tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"cond.text_mask must have shape [B, L] = {list(text.shape[:2])}, got {tuple(mask.shape)}")

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        self._check(z, logsnr, cond)
        cond = self.embedding.normalize_text(cond)
        emb = self.embedding(logsnr, cond, z.shape[0])  # [B, 4 dim]
        extra = conditioning_channels(z, cond, self.cfg.extra_in_channels, "UNet3D")
        z_in = with_estimate(z, getattr(cond, "self_cond", None), self.cfg.self_condition, "model.unet.self_condition")
        x_in = z_in if extra is None else torch.cat([z_in, extra], dim=1)
        h = self.conv_in(to_patches(x_in, self.cfg.patch_size))  # [B, dim, F, H / p, W / p]
        skips = [h]
        for block in self.down:
            h = self._run(block, h, emb, cond)
            skips.append(h)
        for block in self.middle:
            h = self._run(block, h, emb, cond)
        for block in self.up:
            h = self._run(block, torch.cat([h, skips.pop()], dim=1), emb, cond)
        out = self.conv_out(F.silu(self.norm_out(h)))
        return from_patches(out, self.cfg.patch_size)  # [B, out_channels, F, H, W]

    def _run(self, block: UNetBlock, h: Tensor, emb: Tensor, cond) -> Tensor:
        if self.cfg.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, cond, use_reentrant=False)
        return block(h, emb, cond)


def to_patches(x: Tensor, patch: int) -> Tensor:
    """``[B, C, F, H, W] -> [B, C * patch², F, H / patch, W / patch]``: each frame's non-overlapping
    ``patch x patch`` pixel blocks as channels (``pixel_unshuffle`` per frame); the identity for 1."""
    if patch == 1:
        return x
    b, c, f, h, w = x.shape
    x = F.pixel_unshuffle(x.transpose(1, 2).reshape(b * f, c, h, w), patch)
    return x.reshape(b, f, c * patch * patch, h // patch, w // patch).transpose(1, 2)


def from_patches(x: Tensor, patch: int) -> Tensor:
    """The inverse of :func:`to_patches`."""
    if patch == 1:
        return x
    b, c, f, h, w = x.shape
    x = F.pixel_shuffle(x.transpose(1, 2).reshape(b * f, c, h, w), patch)
    return x.reshape(b, f, c // (patch * patch), h * patch, w * patch).transpose(1, 2)


# Tensor names of checkpoint format 1 (before the shared conditioning embedders) -> today's names.
_V1_RENAMES = [(re.compile(r"(^|\.)noise_embedding\."), r"\1embedding.noise."),
               (re.compile(r"(^|\.)class_embedding\.weight$"), r"\1embedding.classes.table.weight"),
               (re.compile(r"(^|\.)text_norm\."), r"\1embedding.text.norm."),
               (re.compile(r"(^|\.)text_pool\."), r"\1embedding.text.pool.")]


def upgrade_v1_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the tensors of a format-1 checkpoint (kinema <= 0.1, written before the conditioning
    embedders became shared modules) to today's names; values are unchanged."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _V1_RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


__all__ = ["TEMPORAL_MIXING", "UNet3D", "UNetBlock", "UNetConfig", "upgrade_v1_state"]
