"""Building blocks of the space-time factorized 3D U-Net (VDM, Ho et al. 2022, section 3).

Convolutions are space-only (kernel 1x3x3, so frames never mix in a conv); down/upsampling acts
on H and W only. ``TemporalConv`` (kernel 3x1x1) is the temporal mixing Imagen Video's
super-resolution models use instead of temporal attention (Ho et al. 2022, section 2.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kinema.models.attention import group_norm


def space_conv(cin: int, cout: int) -> nn.Conv3d:
    """3x3 convolution over H, W only (kernel 1x3x3)."""
    return nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), padding=(0, 1, 1))


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features of real ``values [B]`` -> ``[B, dim]`` (Vaswani et al. 2017,
    section 3.5), computed in float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device, dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class NoiseLevelEmbedding(nn.Module):
    """Embedding of the log-SNR: sinusoidal features then a 2-layer MLP -> ``[B, emb_dim]``.

    The log-SNR spans roughly [-20, 20]; it is mapped to [0, 1000] (the range of DDPM's discrete
    step index that the sinusoidal frequencies were designed for) by 1000 * sigmoid(-logsnr / 4):
    a smooth, monotone, bounded map, so extreme values stay finite and distinct.
    """

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, logsnr: Tensor) -> Tensor:
        position = 1000.0 * torch.sigmoid(-logsnr.float() / 4.0)
        return self.mlp(sinusoidal_embedding(position, self.dim))


class ResBlock(nn.Module):
    """Residual block: GroupNorm -> SiLU -> conv(1x3x3) -> GroupNorm -> FiLM scale-shift from the
    embedding, h * (1 + scale) + shift (Dhariwal & Nichol 2021, "AdaGN") -> SiLU -> dropout ->
    conv(1x3x3) zero-initialized; a 1x1x1 skip when channels change. ``x [B, C, F, H, W]``."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(cin, norm_groups)
        self.conv1 = space_conv(cin, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = space_conv(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class TemporalConv(nn.Module):
    """Residual temporal convolution (kernel 3x1x1, zero-initialized output): mixes neighbouring
    frames at each position; Imagen Video's fully convolutional SR models use it in place of
    temporal attention (Ho et al. 2022, section 2.2). ``x [B, C, F, H, W]``."""

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.conv = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: Tensor, cond=None) -> Tensor:
        return x + self.conv(F.silu(self.norm(x)))


class Downsample(nn.Module):
    """Halve H and W with a stride-(1, 2, 2) space-only convolution; frames are kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W (nearest) then a space-only convolution; frames are kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = space_conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))
