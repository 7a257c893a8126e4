"""The noise prior: the distribution of eps in z_t = alpha_t x + sigma_t eps.

The default is i.i.d. standard normal noise. :class:`FrameCorrelatedNoise` is the "mixed" video
noise prior of Ge et al. 2023 ("Preserve Your Own Correlation", PYoCo, section 3.2, eq. 5):

    eps_f = sqrt(rho) eps_shared + sqrt(1 - rho) eps_ind_f,   eps_shared, eps_ind_f ~ N(0, I),

one ``eps_shared`` for all frames of a clip and an independent ``eps_ind_f`` per frame, so every
frame's noise is still N(0, I) (the VP contract holds per frame) but two frames' noises have
correlation ``rho`` (PYoCo's alpha^2 / (1 + alpha^2)). Frames that share most of their noise see
almost the same evidence at high noise levels, where a video model decides the global attributes of
a clip (an object's colour and shape); with i.i.d. noise every frame's evidence points its own way
and a briefly trained model that does not yet pool evidence across frames decides them per frame.

The prior is part of the forward process, so one prior is used everywhere noise is drawn: training
noise, the sampler's initial z and the ancestral noise of DDPM / DDIM (eta > 0) — the posterior
q(z_s | z_t, x) of a process with noise covariance sigma^2 C has covariance proportional to C too.
Independent images of joint image-video training (``frame_segments``) get their own shared noise.
Distillation draws its z_t from the teacher's prior. The conditioning augmentation of an SR stage's
low-resolution input (diffusion/superres.py) is a separate forward process and stays i.i.d.

A noise prior is a callable ``noise(shape, generator=None, device=None, dtype=None, segments=None)
-> Tensor`` with ``shape = (B, C, F, H, W)`` (or any shape for the i.i.d. prior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

NoisePrior = Callable[..., Tensor]


def standard_normal(shape: Sequence[int], generator: Optional[torch.Generator] = None, device=None, dtype=None,
                    segments: Optional[Tensor] = None) -> Tensor:
    """I.i.d. N(0, I) noise of ``shape`` (``segments`` is irrelevant to it)."""
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


@dataclass(frozen=True)
class FrameCorrelatedNoise:
    """PYoCo's mixed noise (Ge et al. 2023, eq. 5): frame noises with pairwise correlation ``rho``.

    ``rho = 0`` draws exactly what :func:`standard_normal` draws (same values, same generator use);
    ``0 < rho < 1`` draws the independent part ``[B, C, F, H, W]`` first, then one shared part
    ``[B, C, S, H, W]`` per item and frame segment (``segments [B, F]`` ids in ``0..F-1``, as
    :func:`kinema.data.joint.frame_segments` makes them; None: one segment per item).
    """

    rho: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.rho < 1.0) or math.isnan(self.rho):
            raise ValueError(f"the frame noise correlation must be in [0, 1), got {self.rho}")

    def __call__(self, shape: Sequence[int], generator: Optional[torch.Generator] = None, device=None, dtype=None,
                 segments: Optional[Tensor] = None) -> Tensor:
        shape = tuple(shape)
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if self.rho == 0.0:
            return eps
        if len(shape) != 5:
            raise ValueError(f"frame-correlated noise needs a video shape [B, C, F, H, W], got {shape}")
        b, c, f, h, w = shape
        shared = torch.randn((b, c, f if segments is not None else 1, h, w), generator=generator, device=device,
                             dtype=dtype)  # [B, C, S, H, W]
        if segments is not None:
            if segments.shape != (b, f):
                raise ValueError(f"segments must be [B, F] = {(b, f)}, got {tuple(segments.shape)}")
            if segments.min() < 0 or segments.max() >= f:
                raise ValueError(f"segment ids must lie in 0..{f - 1}, got {segments.min()}..{segments.max()}")
            index = segments.to(device=shared.device)[:, None, :, None, None].expand(b, c, f, h, w)
            shared = shared.gather(2, index)  # [B, C, F, H, W]: each frame its segment's shared noise
        return math.sqrt(self.rho) * shared + math.sqrt(1.0 - self.rho) * eps


def noise_prior(rho: float) -> NoisePrior:
    """The noise prior with frame correlation ``rho`` (0: i.i.d. standard normal)."""
    return standard_normal if rho == 0.0 else FrameCorrelatedNoise(rho)


__all__ = ["FrameCorrelatedNoise", "NoisePrior", "noise_prior", "standard_normal"]
