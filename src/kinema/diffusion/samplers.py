"""Samplers: stateless functions with one signature.

    sample_xxx(denoise, z, logsnrs, *, generator=None, callback=None, thresholding=None, ...)

- ``denoise(z [B, ...], logsnr [B]) -> Prediction(x, eps)``: the wrapped model (parameterization
  interpreted by :class:`kinema.diffusion.objective.Denoiser`, guidance already applied, any
  conditioning bound in a closure).
- ``z``: the starting point, usually pure noise ``[B, C, F, H, W]`` at ``logsnrs[0]``.
- ``logsnrs``: the time grid as log-SNR values, increasing, float64 ``[N + 1]`` (see
  :func:`kinema.diffusion.schedule.sampling_grid`); the denoiser is evaluated at the first N
  and +inf as the last entry means "land on clean data".
- ``callback(step, total, z, x_hat)`` is called after each step (progress bars, previews).
- ``thresholding``: None, "static" (clip x_hat to [-1, 1]) or "dynamic" (Imagen, Saharia et al.
  2022, section 2.3), applied to x_hat with eps_hat recomputed so both stay consistent with z.

Step coefficients are computed in float64 from the grid and enter the update as Python floats.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from kinema.diffusion.objective import Denoise, Prediction
from kinema.diffusion.noise import NoisePrior, standard_normal

Callback = Optional[Callable[[int, int, Tensor, Tensor], None]]


def _alpha_sigma(logsnr: float) -> tuple[float, float]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)) in double precision."""
    if logsnr == math.inf:
        return 1.0, 0.0
    if logsnr == -math.inf:
        return 0.0, 1.0
    return math.sqrt(1.0 / (1.0 + math.exp(-logsnr))), math.sqrt(1.0 / (1.0 + math.exp(logsnr)))


def static_threshold(x: Tensor) -> Tensor:
    """Clip x_hat to the data range [-1, 1] (Ho et al. 2020, "clipped" sampling)."""
    return x.clamp(-1.0, 1.0)


def dynamic_threshold(x: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, section 2.3): per example,
    s = max(quantile_p(|x_hat|), 1); x_hat <- clip(x_hat, -s, s) / s. ``x [B, ...]``."""
    s = torch.quantile(x.detach().abs().flatten(1).float(), percentile, dim=1).clamp_min(1.0)
    s = s.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return torch.maximum(torch.minimum(x, s), -s) / s


def _threshold(pred: Prediction, z: Tensor, alpha: float, sigma: float, thresholding: Optional[str]) -> Prediction:
    if thresholding is None:
        return pred
    if thresholding == "static":
        x = static_threshold(pred.x)
    elif thresholding == "dynamic":
        x = dynamic_threshold(pred.x)
    else:
        raise ValueError(f"unknown thresholding {thresholding!r}; choose None, 'static' or 'dynamic'")
    eps = (z - alpha * x) / sigma if sigma > 0 else pred.eps
    return Prediction(x, eps)


def _grid(logsnrs) -> list[float]:
    grid = [float(v) for v in torch.as_tensor(logsnrs, dtype=torch.float64).flatten()]
    if len(grid) < 2:
        raise ValueError(f"the log-SNR grid needs at least 2 entries, got {len(grid)}")
    if any(b <= a for a, b in zip(grid, grid[1:])):
        raise ValueError(f"the log-SNR grid must increase strictly (noisy -> clean), got {grid}")
    return grid


def _evaluate(denoise: Denoise, z: Tensor, logsnr: float, thresholding: Optional[str]) -> Prediction:
    alpha, sigma = _alpha_sigma(logsnr)
    pred = denoise(z, torch.full((z.shape[0],), logsnr, dtype=z.dtype, device=z.device))
    return _threshold(pred, z, alpha, sigma, thresholding)


def ddim_step(pred: Prediction, logsnr_s: float, logsnr_t: float, eta: float = 0.0,
              noise: Optional[Tensor] = None) -> Tensor:
    """One DDIM step from level s (noisier) to t (cleaner), Song et al. 2021 eq. 12.

    z_t = alpha_t x_hat + sqrt(sigma_t^2 - c^2) eps_hat + c noise, with
    c^2 = eta^2 sigma_t^2 (1 - exp(lambda_s - lambda_t)) -- the DDPM posterior variance scaled by
    eta^2 (eq. 16, rewritten with the log-SNR: (sigma_t^2/sigma_s^2)(1 - alpha_s^2/alpha_t^2) =
    sigma_t^2 (1 - SNR_s/SNR_t)). ``pred`` and ``noise`` are ``[B, ...]``.
    """
    alpha_t, sigma_t = _alpha_sigma(logsnr_t)
    c2 = 0.0
    if eta > 0.0 and sigma_t > 0.0:
        c2 = eta**2 * sigma_t**2 * -math.expm1(logsnr_s - logsnr_t)
    z = alpha_t * pred.x + math.sqrt(max(sigma_t**2 - c2, 0.0)) * pred.eps
    if c2 > 0.0:
        if noise is None:
            raise ValueError("eta > 0 needs a noise tensor")
        z = z + math.sqrt(c2) * noise
    return z


def sample_ddim(denoise: Denoise, z: Tensor, logsnrs, *, eta: float = 0.0,
                generator: Optional[torch.Generator] = None, callback: Callback = None,
                thresholding: Optional[str] = None, noise: NoisePrior = standard_normal) -> Tensor:
    """DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12). eta = 0 is the
    deterministic sampler; eta = 1 is DDPM's ancestral sampler. ``z [B, ...]`` -> ``[B, ...]``.
    ``noise`` is the forward process's noise prior (diffusion/noise.py), which the ancestral noise follows."""
    grid = _grid(logsnrs)
    total = len(grid) - 1
    for i in range(total):
        pred = _evaluate(denoise, z, grid[i], thresholding)
        fresh = None
        if eta > 0.0 and grid[i + 1] != math.inf:
            fresh = noise(z.shape, generator, z.device, z.dtype)
        z = ddim_step(pred, grid[i], grid[i + 1], eta, fresh)
        if callback is not None:
            callback(i, total, z, pred.x)
    return z


def sample_ddpm(denoise: Denoise, z: Tensor, logsnrs, *, generator: Optional[torch.Generator] = None,
                callback: Callback = None, thresholding: Optional[str] = None,
                noise: NoisePrior = standard_normal) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any grid: each step samples the
    posterior q(z_t | z_s, x = x_hat), whose mean and variance (Kingma et al. 2021, eq. 33) are
    exactly DDIM's step with eta = 1 (Song et al. 2021, section 4.1). ``z [B, ...]``."""
    return sample_ddim(denoise, z, logsnrs, eta=1.0, generator=generator, callback=callback,
                       thresholding=thresholding, noise=noise)


def sample_dpmpp_2m(denoise: Denoise, z: Tensor, logsnrs, *, generator: Optional[torch.Generator] = None,
                    callback: Callback = None, thresholding: Optional[str] = None,
                    noise: NoisePrior = standard_normal) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), data-prediction form.

    With h_i = (lambda_i - lambda_{i-1}) / 2 (the paper's lambda is half our log-SNR) and
    r_i = h_{i-1} / h_i:
        D_i = (1 + 1/(2 r_i)) x_hat_{i-1} - 1/(2 r_i) x_hat_{i-2}
        z_i = (sigma_i / sigma_{i-1}) z_{i-1} - alpha_i (exp(-h_i) - 1) D_i.
    The first step and a final step onto clean data (lambda = +inf) are first order (= DDIM),
    as in the reference implementation's "lower order final". ``generator`` and ``noise`` are unused
    (the solver is deterministic) and kept for the common signature. ``z [B, ...]``.
    """
    del generator, noise
    grid = _grid(logsnrs)
    total = len(grid) - 1
    x_prev: Optional[Tensor] = None
    h_prev = 0.0
    for i in range(total):
        pred = _evaluate(denoise, z, grid[i], thresholding)
        alpha_s, sigma_s = _alpha_sigma(grid[i])
        alpha_t, sigma_t = _alpha_sigma(grid[i + 1])
        if grid[i + 1] == math.inf:
            z = pred.x
        else:
            h = 0.5 * (grid[i + 1] - grid[i])
            d = pred.x
            if x_prev is not None:
                r = h_prev / h
                d = (1.0 + 0.5 / r) * pred.x - (0.5 / r) * x_prev
            z = (sigma_t / sigma_s) * z - alpha_t * math.expm1(-h) * d
            h_prev = h
        x_prev = pred.x
        if callback is not None:
            callback(i, total, z, pred.x)
    return z


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp": sample_dpmpp_2m,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler registered as ``name`` ("ddpm", "ddim", "dpmpp")."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
