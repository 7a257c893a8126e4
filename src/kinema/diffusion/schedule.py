"""Noise schedules in continuous time, variance preserving.

Conventions (DESIGN.md section 3): t in [0, 1]; z_t = alpha_t x + sigma_t eps with
alpha_t^2 + sigma_t^2 = 1; the log signal-to-noise ratio lambda_t = log(alpha_t^2 / sigma_t^2)
decreases in t. A schedule is the map t -> lambda_t; everything else follows from it:

    alpha_t = sqrt(sigmoid(lambda_t)),    sigma_t = sqrt(sigmoid(-lambda_t)).

All arithmetic is done in float64; callers cast at the boundary. Functions accept Python
floats or tensors of any shape and return float64 tensors of the same shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

import torch
from torch import Tensor

TensorLike = Union[Tensor, float]

SCHEDULES = ("cosine", "shifted_cosine", "interpolated_cosine", "linear")


def _f64(x: TensorLike) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def alpha_sigma(logsnr: TensorLike) -> tuple[Tensor, Tensor]:
    """alpha and sigma of a variance-preserving process from its log-SNR.

    Kingma et al. 2021 ("Variational Diffusion Models"), eq. 3-4 with gamma = -lambda:
    alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda). Shapes: ``[...] -> ([...], [...])``,
    float64. lambda = +inf gives (1, 0) (clean data); -inf gives (0, 1) (pure noise).
    """
    lam = _f64(logsnr)
    return torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()


def logsnr_from_alpha_sigma(alpha: TensorLike, sigma: TensorLike) -> Tensor:
    """lambda = log(alpha^2 / sigma^2) (Kingma et al. 2021, eq. 2). Shapes ``[...]``, float64."""
    return 2.0 * (torch.log(_f64(alpha)) - torch.log(_f64(sigma)))


def _cosine_angles(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    # For the (unclipped) cosine schedule lambda = -2 log tan(a) with angle a = pi t / 2.
    a_min = math.atan(math.exp(-0.5 * logsnr_max))
    a_max = math.atan(math.exp(-0.5 * logsnr_min))
    return a_min, a_max


def cosine_logsnr(t: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 0.0) -> Tensor:
    """Cosine schedule as a log-SNR, clipped to [logsnr_min, logsnr_max], optionally shifted.

    Nichol & Dhariwal 2021 cosine schedule alpha_t = cos(pi t / 2), written as
    lambda(t) = -2 log tan(pi t / 2) (Hoogeboom et al. 2023, "simple diffusion", section 3.1,
    eq. 4), with t remapped to [t_min, t_max] so that lambda(0) = logsnr_max and
    lambda(1) = logsnr_min. ``shift`` is added afterwards (see :func:`resolution_shift`).
    Shapes ``[...] -> [...]`` float64.
    """
    a_min, a_max = _cosine_angles(logsnr_min, logsnr_max)
    angle = a_min + _f64(t) * (a_max - a_min)
    return -2.0 * torch.log(torch.tan(angle)) + shift


def cosine_t(logsnr: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 0.0) -> Tensor:
    """Inverse of :func:`cosine_logsnr`: t such that cosine_logsnr(t) = logsnr. Shapes ``[...]``."""
    a_min, a_max = _cosine_angles(logsnr_min, logsnr_max)
    angle = torch.atan(torch.exp(-0.5 * (_f64(logsnr) - shift)))
    return (angle - a_min) / (a_max - a_min)


def resolution_shift(resolution: int, base_resolution: int = 64) -> float:
    """Log-SNR shift for training at ``resolution`` with a schedule tuned at ``base_resolution``.

    Hoogeboom et al. 2023 ("simple diffusion"), section 3.1: lambda_shifted(t) =
    lambda(t) + 2 log(base / resolution); higher resolutions get noisier schedules.
    """
    if resolution <= 0 or base_resolution <= 0:
        raise ValueError(f"resolutions must be positive, got resolution={resolution}, base={base_resolution}")
    return 2.0 * math.log(base_resolution / resolution)


def interpolated_cosine_logsnr(t: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0,
                               shift: float = 0.0, shift_end: float = 0.0) -> Tensor:
    """The cosine schedule shifted by ``shift`` at t = 0 and by ``shift_end`` at t = 1, linearly in between.

    Hoogeboom et al. 2023 ("simple diffusion"), section 3.1, "interpolated" schedule:
    lambda(t) = t lambda_shift_end(t) + (1 - t) lambda_shift(t) = cosine(t) + (1 - t) shift + t shift_end,
    with the two shifts from two base resolutions (:func:`resolution_shift`). A ``shift_end`` below ``shift``
    puts more noise at the high-noise end, where the coarse layout (here: an object's place and path) is
    decided, and leaves the low-noise end that draws fine detail as it was. Shapes ``[...] -> [...]`` float64.
    """
    t = _f64(t)
    return cosine_logsnr(t, logsnr_min, logsnr_max) + (1.0 - t) * shift + t * shift_end


def interpolated_cosine_t(logsnr: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0,
                          shift: float = 0.0, shift_end: float = 0.0) -> Tensor:
    """Inverse of :func:`interpolated_cosine_logsnr` (strictly decreasing in t unless ``shift_end`` exceeds
    ``shift`` by the cosine's smallest fall, which :class:`Schedule` checks), by bisection to float64 precision.
    Log-SNRs beyond the ends map to t = 0 or 1. Shapes ``[...] -> [...]``."""
    lam = _f64(logsnr)
    lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
    for _ in range(60):  # 2^-60: below float64's resolution of t
        mid = 0.5 * (lo + hi)
        above = interpolated_cosine_logsnr(mid, logsnr_min, logsnr_max, shift, shift_end) > lam
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def linear_logsnr(t: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Tensor:
    """Schedule linear in log-SNR: lambda(t) = logsnr_max + t (logsnr_min - logsnr_max).

    Kingma et al. 2021 ("Variational Diffusion Models") parameterize gamma(t) = -lambda(t)
    monotonically; its linear form is this one. Shapes ``[...] -> [...]`` float64.
    """
    return logsnr_max + _f64(t) * (logsnr_min - logsnr_max)


def linear_t(logsnr: TensorLike, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Tensor:
    """Inverse of :func:`linear_logsnr`. Shapes ``[...] -> [...]`` float64."""
    return (_f64(logsnr) - logsnr_max) / (logsnr_min - logsnr_max)


@dataclass(frozen=True)
class Schedule:
    """A named schedule t -> lambda_t with its inverse; immutable, holds no tensors.

    ``kind``: "cosine" (default), "shifted_cosine" (cosine + ``shift``, see
    :func:`resolution_shift`), "interpolated_cosine" (shifted by ``shift`` at t = 0 and by ``shift_end`` at
    t = 1, see :func:`interpolated_cosine_logsnr`) or "linear" (linear in log-SNR).
    """

    kind: Literal["cosine", "shifted_cosine", "interpolated_cosine", "linear"] = "cosine"
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift: float = 0.0
    shift_end: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule kind {self.kind!r}; choose one of {SCHEDULES}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"logsnr_min ({self.logsnr_min}) must be smaller than logsnr_max ({self.logsnr_max})"
            )
        if self.kind not in ("shifted_cosine", "interpolated_cosine") and self.shift != 0.0:
            raise ValueError(f"shift={self.shift} only applies to kind='shifted_cosine' or 'interpolated_cosine', "
                             f"not {self.kind!r}")
        if self.kind != "interpolated_cosine" and self.shift_end != 0.0:
            raise ValueError(f"shift_end={self.shift_end} only applies to kind='interpolated_cosine', not {self.kind!r}")
        if self.kind == "interpolated_cosine":
            a_min, a_max = _cosine_angles(self.logsnr_min, self.logsnr_max)
            steepest_rise = 4.0 * (a_max - a_min)  # the cosine's log-SNR falls by at least this per unit t
            if self.shift_end - self.shift >= steepest_rise:
                raise ValueError(f"interpolated_cosine: shift_end ({self.shift_end}) exceeds shift ({self.shift}) by "
                                 f"{steepest_rise:.2f} or more, so lambda(t) would not decrease everywhere")

    @classmethod
    def for_resolution(cls, resolution: int, base_resolution: int = 64, **kwargs) -> "Schedule":
        """Shifted cosine for ``resolution`` (simple diffusion, shift 2 log(base/resolution))."""
        return cls(kind="shifted_cosine", shift=resolution_shift(resolution, base_resolution), **kwargs)

    def logsnr(self, t: TensorLike) -> Tensor:
        """lambda_t for t in [0, 1]; ``[...] -> [...]`` float64."""
        if self.kind == "linear":
            return linear_logsnr(t, self.logsnr_min, self.logsnr_max)
        if self.kind == "interpolated_cosine":
            return interpolated_cosine_logsnr(t, self.logsnr_min, self.logsnr_max, self.shift, self.shift_end)
        return cosine_logsnr(t, self.logsnr_min, self.logsnr_max, self.shift)

    def t(self, logsnr: TensorLike) -> Tensor:
        """Inverse of :meth:`logsnr`; ``[...] -> [...]`` float64."""
        if self.kind == "linear":
            return linear_t(logsnr, self.logsnr_min, self.logsnr_max)
        if self.kind == "interpolated_cosine":
            return interpolated_cosine_t(logsnr, self.logsnr_min, self.logsnr_max, self.shift, self.shift_end)
        return cosine_t(logsnr, self.logsnr_min, self.logsnr_max, self.shift)

    def alpha_sigma(self, t: TensorLike) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) at time t; float64."""
        return alpha_sigma(self.logsnr(t))


def sampling_grid(
    schedule: Schedule,
    steps: int,
    spacing: Literal["t", "logsnr"] = "t",
    t_start: float = 1.0,
    t_end: float = 0.0,
) -> Tensor:
    """The log-SNR grid a sampler walks: ``steps`` noise levels, then +inf (clean data).

    Returns a float64 tensor ``[steps + 1]``, increasing: the denoiser is evaluated at the
    first ``steps`` entries and the last step lands on clean data (alpha = 1, sigma = 0), as
    DDIM's and DPM-Solver's final denoising step do (with ``t_end > 0`` the walk stops at
    lambda(t_end) instead, for partial sampling such as SDEdit). ``spacing="t"`` spaces the levels
    uniformly in t (Song et al. 2021, DDIM "uniform" skip); ``"logsnr"`` uniformly in lambda
    (Lu et al. 2022, DPM-Solver, section 3.3 "uniform logSNR").
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start}, t_end={t_end}")
    if spacing == "t":
        levels = schedule.logsnr(torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64))
    elif spacing == "logsnr":
        lo, hi = schedule.logsnr(t_start).item(), schedule.logsnr(t_end).item()
        levels = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    else:
        raise ValueError(f"unknown grid spacing {spacing!r}; choose 't' or 'logsnr'")
    if t_end == 0.0:
        levels[-1] = math.inf
    return levels
