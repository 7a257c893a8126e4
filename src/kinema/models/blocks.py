"""Building blocks of the space-time factorized 3D U-Net (VDM, Ho, Salimans et al. 2022, section 3).

Layout everywhere: video activations ``[B, C, F, H, W]`` (contiguous or ``channels_last_3d``).

- Convolutions are space-only (kernel 1x3x3): frames never mix inside a convolution, and
  down/upsampling act on H and W only, so the frame count is preserved through the network.
- Normalization is per frame (:class:`FrameGroupNorm`): statistics never pool over frames, so the
  only place where frames exchange information is a temporal layer, and temporal layers obey
  ``Conditioning.frame_segments`` (joint image-video training, VDM section 3).
- :class:`TemporalConv` (kernel 3x1x1) is the temporal mixing that Imagen Video's fully
  convolutional super-resolution models use instead of temporal attention (Ho et al. 2022,
  "Imagen Video", section 2.2).

Every residual branch derives from :class:`ResidualBranch` and names its last layer ``out``;
:func:`zero_init_residual_outputs` is the one function that zero-initializes those layers (called by
the models' ``_init_weights``), so a freshly built block is the identity.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- normalization, convolutions ----------------------------------------------------------------


def num_groups(channels: int, norm_groups: int) -> int:
    """Groups used for ``channels``: ``gcd(norm_groups, channels)``, i.e. ``min(norm_groups, channels)``
    whenever that divides ``channels`` (e.g. 32 groups for every multiple of 32 channels)."""
    return math.gcd(norm_groups, channels)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame, over (C / G, H, W) — never across frames.

    A plain GroupNorm on ``[B, C, F, H, W]`` would pool statistics over all frames, which leaks
    information between the independent images of joint image-video training and makes an
    image's output depend on the frames batched next to it. Per-frame statistics are what the
    factorized model of VDM section 3 computes (its spatial layers treat frames as a batch).

    Runs the fused ``F.group_norm`` on the ``'(b f) c h w'`` view (free for ``channels_last_3d``
    inputs). Under autocast a bf16/fp16 input is normalized in its own dtype rather than cast to
    float32 (autocast's default for group_norm): the kernel accumulates mean and variance in
    float32 and normalizes in float32 either way, only the output is rounded to bf16 — as every
    bf16 activation is — and it saves two full-size float32 copies per norm.
    """

    over_clip = False  # True: statistics over (C / G, F, H, W), shared by the clip's frames (UNetConfig.norm_stats)

    def forward(self, x: Tensor) -> Tensor:  # x [B, C, F, H, W]
        b, c, f, h, w = x.shape
        frames = x if self.over_clip else x.transpose(1, 2).reshape(b * f, c, h, w)  # '(b f) c h w'
        device = x.device.type
        if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                out = F.group_norm(frames, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        else:
            out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        if self.over_clip:
            return out
        return out.reshape(b, f, c, h, w).transpose(1, 2)  # [B, C, F, H, W]


def group_norm(channels: int, norm_groups: int = 32) -> FrameGroupNorm:
    """Per-frame GroupNorm over ``channels`` with :func:`num_groups` groups."""
    return FrameGroupNorm(num_groups(channels, norm_groups), channels, eps=1e-6)


def space_conv(cin: int, cout: int, stride: int = 1) -> nn.Conv3d:
    """3x3 convolution over H, W only: a Conv3d with kernel 1x3x3 (and stride (1, s, s))."""
    return nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))


# ---- noise-level embedding ----------------------------------------------------------------------


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of real ``values [B]`` -> ``[B, dim]`` (Vaswani et al. 2017, section 3.5):
    ``cos(v w_k), sin(v w_k)`` with frequencies ``w_k = max_period^(-k / (dim/2))`` from 1 down to
    ~1/max_period. Always float32 (autocast-independent); odd ``dim`` gets one zero pad."""
    half = dim // 2
    k = torch.arange(half, device=values.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * k / max(half, 1))  # [dim/2]
    args = values.float()[:, None] * freqs[None, :]  # [B, dim/2]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


def frame_positions(frames: int, frame_segments: Optional[Tensor] = None,
                    device: Optional[torch.device] = None) -> Tensor:
    """Each frame's index within its clip: ``[1, F]`` (0 .. F-1) or, with ``frame_segments [B, F]``,
    ``[B, F]`` counted from the first frame of the frame's segment (an image appended by joint
    training is at position 0 of its own segment, as a one-frame clip would be). Long."""
    pos = torch.arange(frames, device=device)
    if frame_segments is None:
        return pos[None]
    segments = frame_segments.to(device=device)  # unmoved when device is None
    same = segments[:, :, None] == segments[:, None, :]  # [B, F (frame), F (other)]
    earlier = torch.ones_like(same[0]).tril(-1)  # other < frame
    return (same & earlier).sum(-1)  # frames of the same segment before each frame


def logsnr_to_position(logsnr: Tensor) -> Tensor:
    """Map log-SNR onto the [0, 1000] "timestep" range sinusoidal embeddings are tuned for.

    ``position = 25 (20 - logsnr)``: linear, so lambda = +20 (essentially clean, sigma < 5e-5) -> 0 and
    lambda = -20 (essentially pure noise) -> 1000, DDPM's step range. With frequencies from 1 to
    1/10000 this resolves lambda to ~0.04 at the top frequency while the lowest frequencies vary
    monotonically over the whole range. Linear (rather than a squashing map such as
    sigmoid) keeps the same resolution everywhere; values beyond +-20 extrapolate smoothly and
    stay finite because sin/cos are bounded. Computed in float32.
    """
    return 25.0 * (20.0 - logsnr.float())


class NoiseLevelEmbedding(nn.Module):
    """log-SNR ``[B]`` -> ``[B, emb_dim]``: :func:`logsnr_to_position`, sinusoidal features of width
    ``dim``, then Linear -> SiLU -> Linear (the usual DDPM/ADM time embedding)."""

    def __init__(self, dim: int, emb_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, logsnr: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(logsnr_to_position(logsnr), self.dim))


# ---- residual blocks ----------------------------------------------------------------------------


class ResidualBranch(nn.Module):
    """Marker base for blocks computing ``x + branch(x)``; ``self.out`` is the branch's last layer,
    zero-initialized by :func:`zero_init_residual_outputs` so the block starts as the identity."""

    out: nn.Module


def zero_init_residual_outputs(module: nn.Module) -> None:
    """Zero the weight and bias of ``out`` in every :class:`ResidualBranch` inside ``module``."""
    for m in module.modules():
        if isinstance(m, ResidualBranch):
            nn.init.zeros_(m.out.weight)
            if m.out.bias is not None:
                nn.init.zeros_(m.out.bias)


class ResBlock(ResidualBranch):
    """Residual block with FiLM conditioning (Dhariwal & Nichol 2021's "AdaGN"), space-only convs:

    ``h = conv1x3x3(SiLU(GN(x)))``; ``h = GN(h) * (1 + scale) + shift`` with ``(scale, shift)`` a linear
    map of ``SiLU(emb)``; ``h = out(dropout(SiLU(h)))`` (``out`` a zero-initialized 1x3x3 conv);
    returns ``skip(x) + h`` where ``skip`` is a 1x1x1 conv when the channel count changes.
    ``x [B, cin, F, H, W]``, ``emb [B, emb_dim]`` -> ``[B, cout, F, H, W]``.
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float = 0.0, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm1 = group_norm(cin, norm_groups)
        self.conv1 = space_conv(cin, cout)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = group_norm(cout, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.out = space_conv(cout, cout)
        self.skip = nn.Conv3d(cin, cout, kernel_size=1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, cout, F, H, W]
        scale, shift = self.film(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)  # [B, cout, 1, 1, 1]
        h = self.norm2(h) * (1 + scale) + shift
        h = self.out(self.dropout(F.silu(h)))
        return self.skip(x) + h


def segment_continuity(frame_segments: Tensor) -> Tensor:
    """``[B, F]`` -> ``[B, F - 1]`` bool: True where frames t and t + 1 belong to the same segment."""
    return frame_segments[:, 1:] == frame_segments[:, :-1]


def segment_conv3d(x: Tensor, conv: nn.Conv3d, frame_segments: Optional[Tensor]) -> Tensor:
    """``conv`` (kernel ``(3, k, k)``, padding ``(1, k // 2, k // 2)``) over ``x [B, C, F, H, W]`` in which a
    neighbouring frame of another ``frame_segments [B, F]`` segment counts as zero padding, as the clip's
    border does: independent images never mix. The three temporal taps are applied as ``1 x k x k``
    convolutions to the frame, its masked predecessor and its masked successor."""
    if conv.kernel_size[0] != 3 or conv.padding[0] != 1:
        raise ValueError(f"segment_conv3d needs a temporal kernel of 3 with padding 1, got kernel {conv.kernel_size} "
                         f"and padding {conv.padding}")
    if frame_segments is None:
        return conv(x)
    same = segment_continuity(frame_segments).to(x.dtype)[:, None, :, None, None]  # [B, 1, F-1, 1, 1]
    prev = F.pad(x[:, :, :-1] * same, (0, 0, 0, 0, 1, 0))  # prev[t] = x[t-1] within a segment, else 0
    nxt = F.pad(x[:, :, 1:] * same, (0, 0, 0, 0, 0, 1))  # nxt[t] = x[t+1] within a segment, else 0
    w, pad = conv.weight, (0,) + tuple(conv.padding[1:])  # [Cout, Cin, 3, k, k]
    return (F.conv3d(prev, w[:, :, :1], padding=pad) + F.conv3d(x, w[:, :, 1:2], conv.bias, padding=pad)
            + F.conv3d(nxt, w[:, :, 2:], padding=pad))


class TemporalConv(ResidualBranch):
    """Residual temporal convolution ``x + out(SiLU(GN(x)))`` with ``out`` a 3x1x1 conv over frames
    (zero-initialized by :func:`zero_init_residual_outputs`). Imagen Video's SR models use it in
    place of temporal attention (Ho et al. 2022, "Imagen Video", section 2.2).

    With ``cond.frame_segments`` a neighbour from another segment counts as zero padding (as the
    clip's border does), so independent images never mix (:func:`segment_conv3d`).
    ``x [B, C, F, H, W]``.
    """

    def __init__(self, channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.out = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: Tensor, cond=None) -> Tensor:
        return x + segment_conv3d(F.silu(self.norm(x)), self.out, getattr(cond, "frame_segments", None))


# ---- resampling ---------------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve H and W with a stride-(1, 2, 2) 1x3x3 convolution; the frame count is kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = space_conv(channels, channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, F, H, W] -> [B, C, F, H/2, W/2]
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W (nearest neighbour) then a 1x3x3 convolution; the frame count is kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = space_conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, F, H, W] -> [B, C, F, 2H, 2W]
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))
