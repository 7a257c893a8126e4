"""Fréchet distance between Gaussians fitted to feature sets (FID: Heusel et al. 2017; FVD:
Unterthiner et al. 2018), computed stably in float64.

    d²((μ1, Σ1), (μ2, Σ2)) = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}

``tr (Σ1 Σ2)^{1/2}`` is computed without a general matrix square root: with ``S = Σ1^{1/2}`` (from
the eigendecomposition of the symmetric Σ1), ``Σ1 Σ2`` is similar to the symmetric positive
semi-definite ``M = S Σ2 S``, so ``tr (Σ1 Σ2)^{1/2} = Σ_i sqrt(λ_i(M))``. Tiny negative eigenvalues
from round-off are clipped to 0, so the result is real and never NaN even for singular Σ
(fewer samples than feature dimensions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class GaussianStats:
    """Mean ``mu [D]`` and covariance ``sigma [D, D]`` (float64) of ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features) -> "GaussianStats":
        """Fit to features ``[N, D]`` (unbiased covariance, as numpy's ``np.cov``)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need features [N, D] with N >= 2 to fit a Gaussian, got shape {x.shape}")
        return cls(x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), x.shape[0])

    def save(self, path: str | Path) -> None:
        np.savez(path, mu=self.mu, sigma=self.sigma, n=np.int64(self.n))

    @classmethod
    def load(cls, path: str | Path) -> "GaussianStats":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mu"], f["sigma"], int(f["n"]))


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via ``eigh`` (negative round-off clipped)."""
    a = (a + a.T) / 2
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr (Σ1 Σ2)^{1/2}`` for symmetric PSD Σ1, Σ2, as ``Σ sqrt(eig(Σ1^{1/2} Σ2 Σ1^{1/2}))``."""
    s = sqrtm_psd(np.asarray(sigma1, np.float64))
    m = s @ np.asarray(sigma2, np.float64) @ s
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(μ1, Σ1) and N(μ2, Σ2) (module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    d2 = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(d2, 0.0))


def frechet_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """:func:`frechet_distance` of two fitted :class:`GaussianStats`."""
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
