"""The VDM 3D U-Net (Ho, Salimans et al. 2022, "Video Diffusion Models", section 3 and fig. 1).

A 2D image U-Net extended to video by factorizing over space and time: every convolution is
space-only (1x3x3), each spatial attention block is followed by a temporal attention block over
frames (with a relative position bias), down/upsampling acts on H and W only, and the noise level
(log-SNR) and optional class label modulate every residual block. Because frames interact only
through temporal attention, masking it lets one batch mix video clips and independent images
(joint image-video training, VDM section 3; see ``Conditioning.frame_segments``).

Follows the denoiser contract ``net(z_t, logsnr, cond) -> output`` (DESIGN.md section 3); the
model never sees the schedule and does not know its parameterization.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from kinema.models.attention import SpatialAttention, TemporalAttention, group_norm
from kinema.models.blocks import Downsample, NoiseLevelEmbedding, ResBlock, TemporalConv, Upsample, space_conv


@dataclass
class UNetConfig:
    in_channels: int = 3
    out_channels: Optional[int] = None  # None: same as in_channels
    dim: int = 64  # channels at full resolution
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)  # channel multiplier per level; each level halves H, W
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (1, 2, 3)  # levels (0 = full resolution) with spatial + temporal attention
    head_dim: int = 32
    dropout: float = 0.0
    temporal_attention: bool = True  # False: temporal convolutions instead (Imagen Video SR models)
    rel_pos_buckets: int = 32
    rel_pos_max_distance: int = 32
    num_classes: int = 0  # > 0: class-conditional; label `num_classes` is the null label for guidance
    norm_groups: int = 32
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.dim_mults = tuple(self.dim_mults)
        self.attn_levels = tuple(self.attn_levels)
        checks = [
            (self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}"),
            (self.out_channels is None or self.out_channels >= 1, f"out_channels must be >= 1, got {self.out_channels}"),
            (self.dim >= 1, f"dim must be >= 1, got {self.dim}"),
            (len(self.dim_mults) >= 1 and all(m >= 1 for m in self.dim_mults),
             f"dim_mults must be a non-empty list of positive ints, got {self.dim_mults}"),
            (self.num_res_blocks >= 1, f"num_res_blocks must be >= 1, got {self.num_res_blocks}"),
            (all(0 <= a < len(self.dim_mults) for a in self.attn_levels),
             f"attn_levels {self.attn_levels} must index dim_mults (0..{len(self.dim_mults) - 1})"),
            (self.head_dim >= 1, f"head_dim must be >= 1, got {self.head_dim}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}"),
            (self.norm_groups >= 1, f"norm_groups must be >= 1, got {self.norm_groups}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class Stage(nn.Module):
    """A sequence of layers run as one unit (and one gradient-checkpointing segment)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, emb: Tensor, cond) -> Tensor:
        for layer in self.layers:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, (SpatialAttention, TemporalAttention, TemporalConv)):
                x = layer(x, cond)
            else:
                x = layer(x)
        return x


class UNet3D(nn.Module):
    """``forward(z [B, C, F, H, W], logsnr [B], cond) -> [B, out_channels, F, H, W]``."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim, g = cfg.dim, cfg.norm_groups
        emb_dim = 4 * dim
        self.noise_embedding = NoiseLevelEmbedding(dim, emb_dim)
        self.class_embedding = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes > 0 else None
        self.conv_in = space_conv(cfg.in_channels, dim)

        def mixing(ch: int) -> list[nn.Module]:
            temporal = (TemporalAttention(ch, cfg.head_dim, g, cfg.rel_pos_buckets, cfg.rel_pos_max_distance)
                        if cfg.temporal_attention else TemporalConv(ch, g))
            return [SpatialAttention(ch, cfg.head_dim, g), temporal]

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, cfg.dropout, g)

        levels = len(cfg.dim_mults)
        self.down = nn.ModuleList()
        skips, ch = [dim], dim
        for level, mult in enumerate(cfg.dim_mults):
            out = dim * mult
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, out)] + (mixing(out) if level in cfg.attn_levels else [])
                self.down.append(Stage(layers))
                ch = out
                skips.append(ch)
            if level < levels - 1:
                self.down.append(Stage([Downsample(ch)]))
                skips.append(ch)
        self.middle = Stage([res(ch, ch), *mixing(ch), res(ch, ch)])
        self.up = nn.ModuleList()
        for level in reversed(range(levels)):
            out = dim * cfg.dim_mults[level]
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), out)] + (mixing(out) if level in cfg.attn_levels else [])
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(out))
                self.up.append(Stage(layers))
                ch = out
        self.norm_out = group_norm(ch, g)
        self.conv_out = space_conv(ch, cfg.out_channels or cfg.in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """The one place initialization is decided: the last layer of every residual branch
        (ResBlock.conv2, attention output projections, temporal convolutions) and the final conv
        start at zero, so each block starts as the identity and the network outputs exactly 0
        (Ho et al. 2020 / Dhariwal & Nichol 2021 practice). Everything else keeps PyTorch's default."""
        zero = [self.conv_out]
        for m in self.modules():
            if isinstance(m, ResBlock):
                zero.append(m.conv2)
            elif isinstance(m, (SpatialAttention, TemporalAttention)):
                zero.append(m.proj)
            elif isinstance(m, TemporalConv):
                zero.append(m.conv)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, z: Tensor, logsnr: Tensor) -> None:
        cfg = self.cfg
        if z.ndim != 5:
            raise ValueError(f"UNet3D expects z of shape [B, C, F, H, W], got {tuple(z.shape)}")
        if z.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet3D was built for {cfg.in_channels} input channels, got z of shape {tuple(z.shape)}")
        factor = 2 ** (len(cfg.dim_mults) - 1)
        if z.shape[-2] % factor or z.shape[-1] % factor:
            raise ValueError(f"H and W must be divisible by {factor} (2 ** (len(dim_mults) - 1)); "
                             f"got z of shape {tuple(z.shape)}")
        if logsnr.shape != (z.shape[0],):
            raise ValueError(f"logsnr must have shape [B] = [{z.shape[0]}], got {tuple(logsnr.shape)}")

    def forward(self, z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        self._check(z, logsnr)
        emb = self.noise_embedding(logsnr)  # [B, 4 dim]
        if self.class_embedding is not None:
            labels = getattr(cond, "class_labels", None) if cond is not None else None
            if labels is None:
                labels = torch.full((z.shape[0],), self.cfg.num_classes, device=z.device, dtype=torch.long)
            emb = emb + self.class_embedding(labels)
        h = self.conv_in(z)
        hs = [h]
        for stage in self.down:
            h = self._run(stage, h, emb, cond)
            hs.append(h)
        h = self._run(self.middle, h, emb, cond)
        for stage in self.up:
            h = self._run(stage, torch.cat([h, hs.pop()], dim=1), emb, cond)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _run(self, stage: Stage, h: Tensor, emb: Tensor, cond) -> Tensor:
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, h, emb, cond, use_reentrant=False)
        return stage(h, emb, cond)
