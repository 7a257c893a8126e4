"""Classifier-free guidance (Ho & Salimans 2021), as used by VDM (Ho et al. 2022, section 3.1)
and Imagen Video (Ho et al. 2022, section 2.4).

The guided prediction is eps_tilde = (1 + w) eps_c - w eps_u. Because x_hat, eps_hat and v_hat are
all affine in the network output for a fixed z (objective.py), mixing in eps, v or x space gives
the same result; kinema mixes x_hat and eps_hat with the same weights so they stay consistent.
w = 0 is plain conditional sampling.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from kinema.conditioning import Conditioning
from kinema.diffusion.objective import Prediction


def guide(cond: Prediction, uncond: Prediction, w: float | Tensor) -> Prediction:
    """Ho & Salimans 2021, eq. 6: (1 + w) * conditional - w * unconditional, for x and eps.

    ``cond``, ``uncond`` hold ``[B, ...]`` tensors; ``w`` a float or ``[B]`` tensor.
    """
    if isinstance(w, Tensor) and w.ndim == 1:
        w = w.reshape(-1, *([1] * (cond.x.ndim - 1))).to(cond.x)
    return Prediction((1 + w) * cond.x - w * uncond.x, (1 + w) * cond.eps - w * uncond.eps)


def guided_denoiser(denoiser: Callable[..., Prediction], cond: Conditioning, uncond: Conditioning,
                    w: float | Tensor) -> Callable[[Tensor, Tensor], Prediction]:
    """A sampler-ready ``denoise(z, logsnr)`` applying classifier-free guidance with weight w.

    The conditional and unconditional passes run as ONE batched forward of size 2B
    (``cond`` and ``uncond`` must set the same fields; ``uncond`` is usually
    ``drop_conditioning(cond)``). With w == 0 only the conditional pass runs.
    """
    if not isinstance(w, Tensor) and w == 0:
        return lambda z, logsnr: denoiser(z, logsnr, cond)
    both = Conditioning.cat([cond, uncond])

    def denoise(z: Tensor, logsnr: Tensor) -> Prediction:
        pred = denoiser(torch.cat([z, z]), torch.cat([logsnr, logsnr]), both)
        b = z.shape[0]
        return guide(Prediction(pred.x[:b], pred.eps[:b]), Prediction(pred.x[b:], pred.eps[b:]), w)

    return denoise
