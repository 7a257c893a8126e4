"""Frame-by-frame fidelity metrics for prediction tasks (the generated video should equal a
known one): PSNR and SSIM, averaged over frames, one value per video.

Inputs are videos ``[B, C, F, H, W]`` (or ``[C, F, H, W]``) on the library's [-1, 1] scale, so the
data range is ``L = 2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

DATA_RANGE = 2.0  # [-1, 1]


def _frames(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
    """Both videos as frames ``[B*F, C, H, W]`` (float64) and the batch size B."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ValueError(f"videos must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim == 4:
        x, y = x[None], y[None]
    if x.ndim != 5:
        raise ValueError(f"expected videos [B, C, F, H, W] or [C, F, H, W], got shape {tuple(x.shape)}")
    b = x.shape[0]
    return (rearrange(x.double(), "b c f h w -> (b f) c h w"),
            rearrange(y.double(), "b c f h w -> (b f) c h w"), b)


def psnr(x: Tensor, y: Tensor, data_range: float = DATA_RANGE) -> Tensor:
    """Peak signal-to-noise ratio ``10 log10(L² / MSE)`` per frame, averaged over frames -> ``[B]``.
    Identical frames give ``+inf``."""
    fx, fy, b = _frames(x, y)
    mse = (fx - fy).pow(2).mean(dim=(1, 2, 3))  # [B*F]
    per_frame = 10 * torch.log10(data_range**2 / mse)  # inf where mse == 0
    return per_frame.view(b, -1).mean(1).float()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """Normalised 2D Gaussian ``[size, size]`` (float64), Wang et al. 2004's 11x11, σ = 1.5 window."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(x: Tensor, y: Tensor, data_range: float = DATA_RANGE, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Structural similarity, Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13:

        SSIM(x, y) = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2)),
        C1 = (k1 L)², C2 = (k2 L)²,

    with local statistics under a Gaussian window (11x11, σ = 1.5) over the "valid" region, the map
    averaged per frame and channel, then over frames -> ``[B]``. Identical videos give 1.
    """
    fx, fy, b = _frames(x, y)
    n, c, h, w = fx.shape
    if min(h, w) < window:
        raise ValueError(f"SSIM's {window}x{window} window does not fit frames of {h}x{w}; pass a smaller window")
    kernel = gaussian_window(window, sigma).to(fx.device)[None, None].expand(c, 1, window, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)

    mu_x, mu_y = blur(fx), blur(fy)
    var_x = blur(fx * fx) - mu_x**2
    var_y = blur(fy * fy) - mu_y**2
    cov = blur(fx * fy) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return smap.mean(dim=(1, 2, 3)).view(b, -1).mean(1).float()

