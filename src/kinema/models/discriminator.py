"""Patch discriminators for adversarial autoencoder training.

A *patch* discriminator (PatchGAN, Isola et al. 2017, "Image-to-Image Translation with Conditional
Adversarial Networks", section 3.2.2) is a small fully convolutional network whose output is a map of
logits, one per overlapping input patch, rather than one logit per image: it judges local texture and
sharpness, which is what an L1/L2 reconstruction loss blurs. The layout follows the one VQGAN uses
(Esser et al. 2021, "Taming Transformers", section 3.1): a stride-2 4x4 convolution and LeakyReLU(0.2),
``layers - 1`` more stride-2 convolutions with normalization, one stride-1 convolution with
normalization, and a stride-1 convolution to one logit channel.

- :class:`PatchDiscriminator2D` judges every frame on its own (``'b c f h w -> (b f) c h w'``): the image
  autoencoder's discriminator.
- :class:`PatchDiscriminator3D` uses 3D convolutions (kernel 3 in time, stride 1 in time), so each logit
  sees a few consecutive frames: the temporal discriminator of Video LDM's decoder fine-tuning
  (Blattmann et al. 2023, section 3.1.1, "a (patch-wise) temporal discriminator built from 3D
  convolutions"). Flicker between frames is visible to it, not to a per-frame discriminator.

Normalization is a per-frame GroupNorm (:func:`~kinema.models.blocks.group_norm`) rather than batch
norm: the logits of an item never depend on the other items of the batch, so the output is the same
whatever the micro-batch split or the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from kinema.models.blocks import group_norm, num_groups

DISCRIMINATOR_KINDS = ("2d", "3d")


@dataclass
class DiscriminatorConfig:
    """``kind``: ``2d`` (per frame) or ``3d`` (3D convolutions); ``in_channels`` of the videos;
    ``width``: channels of the first layer (doubling per stride-2 layer, capped at 8x); ``layers``:
    stride-2 layers (each halves H and W; inputs must be at least ``2^layers`` pixels)."""

    kind: Literal["2d", "3d"] = "2d"
    in_channels: int = 3
    width: int = 64
    layers: int = 3
    norm_groups: int = 32

    def __post_init__(self) -> None:
        if self.kind not in DISCRIMINATOR_KINDS:
            raise ValueError(f"DiscriminatorConfig.kind must be one of {DISCRIMINATOR_KINDS}, got {self.kind!r}")
        for name in ("in_channels", "width", "layers", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiscriminatorConfig.{name} must be >= 1, got {getattr(self, name)}")


def _patch_layers(cfg: DiscriminatorConfig, conv, norm) -> nn.Sequential:
    """The PatchGAN stack (see the module docstring) from ``conv(cin, cout, stride)`` and ``norm(c)``."""
    chs = [cfg.width * min(2 ** i, 8) for i in range(cfg.layers + 1)]
    layers: list[nn.Module] = [conv(cfg.in_channels, chs[0], 2), nn.LeakyReLU(0.2)]
    for i in range(1, cfg.layers + 1):
        stride = 2 if i < cfg.layers else 1
        layers += [conv(chs[i - 1], chs[i], stride), norm(chs[i]), nn.LeakyReLU(0.2)]
    layers.append(conv(chs[-1], 1, 1))
    return nn.Sequential(*layers)


class PatchDiscriminator2D(nn.Module):
    """Per-frame PatchGAN: ``forward(video [B, C, F, H, W]) -> logits [B, F, H', W']``."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _patch_layers(cfg, lambda cin, cout, s: nn.Conv2d(cin, cout, 4, stride=s, padding=1),
                                 lambda c: nn.GroupNorm(num_groups(c, cfg.norm_groups), c, eps=1e-6))

    def forward(self, video: Tensor) -> Tensor:
        b = video.shape[0]
        logits = self.net(rearrange(video, "b c f h w -> (b f) c h w"))  # [(B F), 1, H', W']
        return rearrange(logits, "(b f) 1 h w -> b f h w", b=b)


class PatchDiscriminator3D(nn.Module):
    """PatchGAN of 3D convolutions (kernel ``3 x 4 x 4``, stride 1 in time, the clip's ends padded with
    zeros): ``forward(video [B, C, F, H, W]) -> logits [B, F, H', W']``, each logit seeing a window of
    frames that grows by 2 per layer."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = _patch_layers(cfg, lambda cin, cout, s: nn.Conv3d(cin, cout, (3, 4, 4), stride=(1, s, s),
                                                                      padding=(1, 1, 1)),
                                 lambda c: group_norm(c, cfg.norm_groups))

    def forward(self, video: Tensor) -> Tensor:
        return self.net(video)[:, 0]  # [B, F, H', W']


def build_discriminator(cfg: DiscriminatorConfig) -> nn.Module:
    """The patch discriminator of ``cfg.kind``."""
    return (PatchDiscriminator2D if cfg.kind == "2d" else PatchDiscriminator3D)(cfg)


# ---- losses ------------------------------------------------------------------------------------------


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017, "Geometric GAN", eq. 8; the loss of VQGAN's
    discriminator, Esser et al. 2021): ``0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat)))``."""
    return 0.5 * (F.relu(1.0 - real_logits.float()).mean() + F.relu(1.0 + fake_logits.float()).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """The generator's side of the hinge GAN (Lim & Ye 2017, eq. 9): ``-mean D(x_hat)``."""
    return -fake_logits.float().mean()


__all__ = ["DISCRIMINATOR_KINDS", "DiscriminatorConfig", "PatchDiscriminator2D", "PatchDiscriminator3D",
           "build_discriminator", "hinge_d_loss", "hinge_g_loss"]
