"""Classifier-free guidance (Ho & Salimans 2021), as used by VDM (Ho et al. 2022, section 3.1)
and Imagen Video (Ho et al. 2022, section 2.4).

The guided prediction is eps_tilde = (1 + w) eps_c - w eps_u. Because x_hat, eps_hat and v_hat are
all affine in the network output for a fixed z (objective.py), mixing in eps, v or x space gives
the same result; kinema mixes x_hat and eps_hat with the same weights so they stay consistent.
w = 0 is plain conditional sampling. The weight may change over the sampling steps (Imagen Video's
oscillating guidance, :func:`oscillating_guidance_weights`): :func:`weight_by_logsnr` turns per-step
weights into a stateless function of the noise level that :func:`guided_denoiser` accepts.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor

from kinema.conditioning import Conditioning
from kinema.diffusion.objective import Prediction


def oscillating_guidance_weights(num_steps: int, w_high: float, w_low: float,
                                 constant_fraction: float = 0.5) -> list[float]:
    """Imagen Video's oscillating guidance (Ho et al. 2022, "Imagen Video", section 2, "Large guidance
    weights"): a constant high weight for the first steps, then alternating between a high and a low
    weight (the paper uses 15 and 1), which keeps the text alignment of strong guidance while
    avoiding the saturation artifacts of a constant large weight.

    Returns the weight of each of ``num_steps`` sampling steps (step 0 is the noisiest): ``w_high``
    for the first ``round(constant_fraction * num_steps)`` steps, then ``w_low, w_high, w_low, ...``.
    (The paper does not give the length of the constant phase; ``constant_fraction`` sets it.)
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not 0.0 <= constant_fraction <= 1.0:
        raise ValueError(f"constant_fraction must be in [0, 1], got {constant_fraction}")
    constant = round(constant_fraction * num_steps)
    return [w_high if i < constant or (i - constant) % 2 else w_low for i in range(num_steps)]


def weight_by_logsnr(logsnrs: Sequence[float] | Tensor, weights: Sequence[float]) -> Callable[[Tensor], Tensor]:
    """Per-step guidance weights as a stateless function of the noise level: the sampler evaluates
    the denoiser at ``logsnrs[i]`` in step i (samplers.py), so ``w(logsnr [B]) -> [B]`` looks up the
    weight of the nearest grid entry. ``logsnrs`` is the sampling grid ``[N + 1]`` (its last, clean
    entry is never evaluated), ``weights`` has N entries. No hidden step counter."""
    grid = torch.as_tensor(logsnrs, dtype=torch.float64).flatten()
    if len(grid) != len(weights) + 1:
        raise ValueError(f"{len(weights)} guidance weights for a grid of {len(grid) - 1} steps")
    grid = grid[:-1]
    table = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    finite = torch.where(torch.isfinite(grid), grid, torch.sign(grid) * 1e4)

    def w(logsnr: Tensor) -> Tensor:
        idx = (logsnr.detach().double().cpu()[:, None] - finite[None]).abs().argmin(dim=1)  # [B]
        return table[idx].to(logsnr.device)

    return w


Weight = Union[float, Tensor, Callable[[Tensor], Tensor]]


def guide(cond: Prediction, uncond: Prediction, w: float | Tensor) -> Prediction:
    """Ho & Salimans 2021, eq. 6: (1 + w) * conditional - w * unconditional, for x and eps.

    ``cond``, ``uncond`` hold ``[B, ...]`` tensors; ``w`` a float or ``[B]`` tensor.
    """
    if isinstance(w, Tensor) and w.ndim == 1:
        w = w.reshape(-1, *([1] * (cond.x.ndim - 1))).to(cond.x)
    return Prediction((1 + w) * cond.x - w * uncond.x, (1 + w) * cond.eps - w * uncond.eps)


def guided_denoiser(denoiser: Callable[..., Prediction], cond: Conditioning, uncond: Conditioning,
                    w: Weight) -> Callable[[Tensor, Tensor], Prediction]:
    """A sampler-ready ``denoise(z, logsnr)`` applying classifier-free guidance with weight w.

    The conditional and unconditional passes run as ONE batched forward of size 2B
    (``cond`` and ``uncond`` must set the same fields; ``uncond`` is usually
    ``drop_conditioning(cond)``). ``w`` is a float, a ``[B]`` tensor, or a function of the noise
    level ``w(logsnr [B]) -> [B]`` (e.g. :func:`weight_by_logsnr`). With a float w == 0 only the
    conditional pass runs.
    """
    if isinstance(w, (int, float)) and w == 0:
        return lambda z, logsnr: denoiser(z, logsnr, cond)
    both = Conditioning.cat([cond, uncond])

    def denoise(z: Tensor, logsnr: Tensor) -> Prediction:
        pred = denoiser(torch.cat([z, z]), torch.cat([logsnr, logsnr]), both)
        b = z.shape[0]
        weight = w(logsnr) if callable(w) else w
        return guide(Prediction(pred.x[:b], pred.eps[:b]), Prediction(pred.x[b:], pred.eps[b:]), weight)

    return denoise
