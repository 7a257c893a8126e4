"""Super-resolution stages of a cascade and their conditioning augmentation (Imagen Video).

Imagen Video (Ho et al. 2022, section 2.2) chains a base model with temporal super-resolution (TSR)
models that insert frames and spatial super-resolution (SSR) models that add pixels. Every SR model
is an ordinary denoiser of the *high*-resolution video that also reads a low-resolution video,
brought to the output's frames (repeated) and size (bilinear) and concatenated on channels
(:func:`kinema.models.embeddings.conditioning_channels`); it travels in ``Conditioning.lowres``.

Training needs no second dataset: the low-resolution input is derived from the high-resolution clip
itself (:func:`degrade`: every k-th frame, antialiased bilinear down-sizing), so each stage trains
on its own with ``kinema train``. Conditioning augmentation (Ho et al. 2022, section 2.5; Cascaded
Diffusion Models, Ho et al. 2021, section 4.1, "Gaussian conditioning augmentation") noises that
input with the same variance-preserving forward process as the diffusion itself, at a random level
t_aug ~ U[0, sr.aug_max] in training and a fixed ``sr.sample_aug`` when sampling, and gives the
network the level's log-SNR (``Conditioning.lowres_logsnr``, embedded like the noise level). This
makes a stage robust to the artefacts of the stage before it.

Classifier-free guidance never drops the low-resolution input (``DROPPABLE`` in conditioning.py):
an SR stage is always conditioned on it, and guidance, when used, is over text / class labels.

Backbone-agnostic: the hook :class:`LowResInput` reads only the backbone's ``BackboneSpec`` (its
``reads`` and ``extra_in_channels``), so the U-Net, W.A.L.T and the Video LDM share this one path.

Space-agnostic too: the low-resolution input is always a *pixel* video. In a latent space (the latent
upsampler of Video LDM, Blattmann et al. 2023, section 3.2 and appendix; like Stable Diffusion's x4
upscaler) the diffusion runs on the latents of the high-resolution video while the stage reads the
low-resolution pixels, derived from the pixel clip before encoding (the hook declares
``reads_pixels``, see :func:`kinema.diffusion.objective.hook_input`), noise-augmented with the level
given to the model, and brought to the latent grid by the backbone's
:func:`~kinema.models.embeddings.conditioning_channels` (bilinear to the latents' size, frames
repeated). With an autoencoder of spatial factor s and ``sr.spatial_factor = s`` the low-resolution
frames *are* the latent grid. The stage's extra input channels are the pixel channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from kinema.conditioning import with_fields
from kinema.diffusion.objective import coefficients
from kinema.diffusion.schedule import Schedule
from kinema.resize import resize_video


@dataclass
class SRConfig:
    """A super-resolution stage (``sr:`` in the config). Factors 1 and 1: not an SR stage (a base model).

    The stage generates ``data.num_frames x data.size^2`` videos conditioned on a video of
    ``data.num_frames / temporal_factor`` frames of ``(data.size / spatial_factor)^2``.
    """

    spatial_factor: int = 1  # SSR: output H, W = input H, W * spatial_factor
    temporal_factor: int = 1  # TSR: output frames = input frames * temporal_factor
    aug_max: float = 0.0  # training: augmentation level t_aug ~ U[0, aug_max] (0: no augmentation)
    sample_aug: float = 0.0  # sampling: the fixed level t_aug (0: no augmentation); see benchmarks/paper

    @property
    def is_stage(self) -> bool:
        return self.spatial_factor > 1 or self.temporal_factor > 1

    def input_shape(self, frames: int, size: int) -> tuple[int, int]:
        """(frames, size) of the low-resolution input for an output of ``frames x size^2``."""
        return frames // self.temporal_factor, size // self.spatial_factor


def check_sr_config(cfg: SRConfig, frames: int, size: int, spec, lowres_channels: Optional[int] = None) -> None:
    """Errors naming the ``sr.*`` key when an SR config cannot work with the data (``frames``, ``size``)
    and the backbone ``spec`` (a :class:`~kinema.models.backbone.BackboneSpec`). ``lowres_channels``:
    the channels of the low-resolution input, the pixel channels (default ``spec.in_channels``, right in
    pixel space; in a latent space the autoencoder's input channels)."""
    lowres_channels = spec.in_channels if lowres_channels is None else lowres_channels
    for name in ("spatial_factor", "temporal_factor"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"sr.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("aug_max", "sample_aug"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"sr.{name} is a time t_aug in [0, 1], got {getattr(cfg, name)}")
    if not cfg.is_stage:
        return
    if size % cfg.spatial_factor or frames % cfg.temporal_factor:
        raise ValueError(f"sr.spatial_factor={cfg.spatial_factor} must divide data.size={size} and "
                         f"sr.temporal_factor={cfg.temporal_factor} must divide data.num_frames={frames}")
    if "lowres" not in spec.reads or spec.extra_in_channels < lowres_channels:
        raise ValueError(f"an SR stage (sr.spatial_factor={cfg.spatial_factor}, sr.temporal_factor="
                         f"{cfg.temporal_factor}) needs a backbone that reads the low-resolution video: "
                         f"extra_in_channels = the pixel channels = {lowres_channels} (for the U-Net "
                         f"model.unet.extra_in_channels), got {spec.extra_in_channels}")
    if cfg.aug_max > 0 and "lowres_logsnr" not in spec.reads:
        raise ValueError(f"sr.aug_max={cfg.aug_max} needs a backbone that embeds the augmentation level: add "
                         f"lowres_logsnr to its scalar conditions (for the U-Net model.unet.scalar_conditions)")


def degrade(video: Tensor, spatial_factor: int = 1, temporal_factor: int = 1) -> Tensor:
    """The low-resolution counterpart of a high-resolution clip, as an SR stage's training input:
    every ``temporal_factor``-th frame (frames 0, k, 2k, ...: what a base model at the lower frame
    rate would produce) and each frame shrunk by ``spatial_factor`` with antialiased bilinear
    resizing (:func:`kinema.resize.resize_video`). ``[B, C, F, H, W] -> [B, C, F/k, H/s, W/s]``."""
    b, c, f, h, w = video.shape
    if f % temporal_factor or h % spatial_factor or w % spatial_factor:
        raise ValueError(f"degrade: factors (spatial {spatial_factor}, temporal {temporal_factor}) must divide the "
                         f"video's {f} frames of {h}x{w}")
    low = video[:, :, ::temporal_factor]  # [B, C, F/k, H, W]
    return resize_video(low, (h // spatial_factor, w // spatial_factor), antialias=True)


def augment_lowres(lowres: Tensor, t_aug: Tensor, schedule: Schedule,
                   noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Gaussian conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models", section 4.1;
    Imagen Video section 2.5): the forward process of the diffusion applied to the conditioning,
    ``z_aug = alpha(t_aug) lowres + sigma(t_aug) eps`` with the same schedule.

    ``lowres [B, C, F, H, W]``, ``t_aug [B]`` in [0, 1] -> (augmented ``[B, C, F, H, W]``, its log-SNR
    ``[B]`` float64, what the network embeds). Items with ``t_aug == 0`` are returned bit for bit
    (no augmentation), with the log-SNR of t = 0 (the schedule's highest, ``logsnr_max``).
    """
    t_aug = t_aug.to(torch.float64)
    logsnr = schedule.logsnr(t_aug)  # [B]
    if noise is None:
        noise = torch.randn(lowres.shape, generator=generator, device=lowres.device, dtype=lowres.dtype)
    alpha, sigma = coefficients(logsnr, lowres)  # [B, 1, 1, 1, 1]
    noised = alpha * lowres + sigma * noise
    clean = (t_aug == 0).to(lowres.device).reshape(-1, *([1] * (lowres.ndim - 1)))
    return torch.where(clean, lowres, noised), logsnr


def with_lowres(cond, lowres: Tensor, logsnr: Optional[Tensor]):
    """``cond`` (or an empty Conditioning) with the low-resolution input and, when given, its
    augmentation log-SNR ``[B]`` (set it only for backbones that read ``lowres_logsnr``)."""
    return with_fields(cond, lowres=lowres, lowres_logsnr=logsnr.to(lowres.dtype) if logsnr is not None else None)


class LowResInput:
    """Objective hook (:class:`~kinema.diffusion.objective.DiffusionObjective`) of an SR stage: derives
    ``cond.lowres`` from the clip (:func:`degrade`), augments it at t_aug ~ U[0, ``cfg.aug_max``]
    (:func:`augment_lowres`) and sets ``cond.lowres_logsnr`` when the backbone reads it
    (``reads_level``). Random draws, in order, through the objective's rank-aware ``rng``: t_aug
    (only when ``aug_max > 0``), then the augmentation noise. It is called with the *pixel* clip
    (``reads_pixels``): in a latent space the input is degraded from pixels, never from latents."""

    reads_pixels = True

    def __init__(self, cfg: SRConfig, schedule: Schedule, reads_level: bool) -> None:
        if not cfg.is_stage:
            raise ValueError("LowResInput is for SR stages (sr.spatial_factor or sr.temporal_factor > 1)")
        self.cfg, self.schedule, self.reads_level = cfg, schedule, reads_level

    def __call__(self, x: Tensor, cond, rng) -> tuple[object, None]:
        lowres = degrade(x, self.cfg.spatial_factor, self.cfg.temporal_factor)  # [B, C, F/k, H/s, W/s]
        logsnr = None
        if self.cfg.aug_max > 0:
            t_aug = rng.draw(lambda n: torch.rand(n, generator=rng.generator, device=x.device,
                                                  dtype=torch.float64)) * self.cfg.aug_max
            noise = rng.draw(lambda n: torch.randn((n, *lowres.shape[1:]), generator=rng.generator,
                                                   device=x.device, dtype=x.dtype))
            lowres, logsnr = augment_lowres(lowres, t_aug, self.schedule, noise)
        elif self.reads_level:
            logsnr = self.schedule.logsnr(torch.zeros(x.shape[0], dtype=torch.float64, device=x.device))
        return with_lowres(cond, lowres, logsnr if self.reads_level else None), None


__all__ = ["LowResInput", "SRConfig", "augment_lowres", "check_sr_config", "degrade", "with_lowres"]
