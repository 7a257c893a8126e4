"""Classifier-free guidance (Ho & Salimans 2021), as used by VDM (Ho et al. 2022, section 3.1)
and Imagen Video (Ho et al. 2022, section 2.4).

The guided prediction is eps_tilde = (1 + w) eps_c - w eps_u. Because x_hat, eps_hat and v_hat are
all affine in the network output for a fixed z (objective.py), mixing in eps, v or x space gives
the same result; kinema mixes x_hat and eps_hat with the same weights so they stay consistent.
w = 0 is plain conditional sampling. The weight may change over the sampling steps (Imagen Video's
oscillating guidance, :func:`oscillating_guidance_weights`): :func:`weight_by_logsnr` turns per-step
weights into a stateless function of the noise level that :func:`guided_denoiser` accepts, and
:func:`guidance_interval` limits any weight to an interval of noise levels.

Below: conditional sampling from an unconditional model (VDM section 3.1): the replacement method,
reconstruction guidance, and the observation operators they use.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from kinema.conditioning import LABEL_FIELDS, Conditioning, drop_conditioning
from kinema.diffusion.noise import NoisePrior, standard_normal
from kinema.diffusion.objective import Denoise, Prediction, coefficients, eps_from_x
from kinema.resize import resize_video


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

    on_device: dict = {}  # the grid and weights copied once per device: no host round trip per step

    def w(logsnr: Tensor) -> Tensor:
        dtype = torch.float32 if logsnr.device.type == "mps" else torch.float64
        if logsnr.device not in on_device:
            on_device[logsnr.device] = (finite.to(logsnr.device, dtype), table.to(logsnr.device, dtype))
        grid_d, table_d = on_device[logsnr.device]
        idx = (logsnr.detach().to(dtype)[:, None] - grid_d[None]).abs().argmin(dim=1)  # [B]
        return table_d[idx]

    return w


Weight = Union[float, Tensor, Callable[[Tensor], Tensor]]
Interval = tuple[Optional[float], Optional[float]]


def check_interval(interval: Sequence[Optional[float]], name: str = "guidance interval") -> Interval:
    """``interval`` as a ``(lo, hi)`` tuple of log-SNR bounds (None: unbounded), or a ValueError naming it."""
    values = tuple(interval)
    if len(values) != 2 or any(v is not None and (not isinstance(v, (int, float)) or math.isnan(v)) for v in values):
        raise ValueError(f"{name} must be [lo, hi] log-SNR bounds (numbers or null), got {list(values)}")
    lo, hi = (None if v is None else float(v) for v in values)
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"{name} must have lo < hi, got [{lo}, {hi}]")
    return lo, hi


def guidance_interval(w: Weight, interval: Optional[Sequence[Optional[float]]]) -> Weight:
    """Guidance limited to an interval of noise levels (Kynkäänniemi et al. 2024, "Applying guidance in a
    limited interval improves sample and distribution quality in diffusion models"): ``w`` (a float, a
    ``[B]`` tensor or a function of the noise level) where ``lo <= logsnr < hi``, 0 (plain conditional
    sampling) elsewhere. ``interval`` is ``(lo, hi)`` in log-SNR, None for either end = unbounded;
    None returns ``w`` unchanged. A stateless function of the noise level, like :func:`weight_by_logsnr`;
    :func:`guided_denoiser` skips the unconditional pass at the steps where it is 0."""
    if interval is None:
        return w
    lo, hi = check_interval(interval)

    def limited(logsnr: Tensor) -> Tensor:
        base = w(logsnr) if callable(w) else w
        base = torch.as_tensor(base, dtype=logsnr.dtype, device=logsnr.device).expand(logsnr.shape)
        inside = torch.ones_like(logsnr, dtype=torch.bool)
        if lo is not None:
            inside &= logsnr >= lo
        if hi is not None:
            inside &= logsnr < hi
        return torch.where(inside, base, torch.zeros_like(base))

    return limited


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
        weight = w(logsnr) if callable(w) else w
        if isinstance(weight, Tensor) and not bool(weight.any()):  # e.g. outside a guidance interval
            return denoiser(z, logsnr, cond)
        pred = denoiser(torch.cat([z, z]), torch.cat([logsnr, logsnr]), both)
        b = z.shape[0]
        return guide(Prediction(pred.x[:b], pred.eps[:b]), Prediction(pred.x[b:], pred.eps[b:]), weight)

    return denoise


# ---- conditional sampling from an unconditional model (VDM, Ho et al. 2022, section 3.1) ----------
def drop_for_guidance(cond: Conditioning, rate: float, generator: Optional[torch.Generator] = None, *,
                      rand: Optional[Callable[[int], Tensor]] = None) -> Conditioning:
    """Conditioning dropout for classifier-free guidance in training (Ho & Salimans 2021, Algorithm 1):
    each item's text and class label are nulled with probability ``rate`` (by
    :func:`kinema.conditioning.drop_conditioning`). Draws no random numbers for label-free batches.
    ``rand(n) -> [n]`` U(0, 1) draws replace ``torch.rand(n, generator=generator)`` (the trainer
    passes its rank-aware global draws)."""
    if rate <= 0 or (cond.text_mask is None and cond.class_labels is None):
        return cond
    labels = cond.text_mask if cond.text_mask is not None else cond.class_labels
    batch = labels.shape[0]
    u = rand(batch) if rand is not None else torch.rand(batch, generator=generator, device=generator.device)
    drop = u.to(labels.device) < rate
    return drop_conditioning(cond, drop, fields=LABEL_FIELDS)


class GuidanceDropout:
    """Objective hook (:class:`~kinema.diffusion.objective.DiffusionObjective`): :func:`drop_for_guidance`
    at ``rate`` with the objective's rank-aware draws."""

    def __init__(self, rate: float) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"train.cond_dropout must be in [0, 1), got {rate}")
        self.rate = rate

    def __call__(self, x: Tensor, cond: Conditioning, rng) -> tuple[Conditioning, None]:
        return drop_for_guidance(cond, self.rate, rand=rng.uniform), None


#
# A video x is split into a known part x^a and an unknown part x^b. An observation operator A maps a
# full video to what is known about it: y = A(x) = x^a. Two operators cover VDM's uses:
#   - frame selection (temporal extension / interpolation): A(x) = x on the known frames, 0 elsewhere;
#   - spatial downsampling (super-resolution, VDM eq. 8): A(x) = every frame resized to the low size.
# Both wrappers below turn a sampler-ready ``denoise(z, logsnr) -> Prediction`` into another one, so
# every sampler in samplers.py works unchanged (samplers stay stateless, one signature).

Operator = Callable[[Tensor], Tensor]


def _normal(t: Tensor) -> Tensor:
    """An inference-mode tensor cannot be saved for backward; outside inference mode a clone is a
    normal tensor with the same values. Other tensors are returned as they are."""
    return t.clone() if t.is_inference() else t


def _frame_view(known: Tensor) -> Tensor:
    """``known [B, F]`` bool -> ``[B, 1, F, 1, 1]`` for broadcasting against ``[B, C, F, H, W]``."""
    if known.ndim != 2 or known.dtype != torch.bool:
        raise ValueError(f"known frames must be a bool mask [B, F], got {known.dtype} of shape {tuple(known.shape)}")
    return known[:, None, :, None, None]


def frame_selection(known: Tensor) -> Operator:
    """Observation operator for temporal conditioning (VDM section 3.1): ``A(x) = x`` on the
    frames where ``known [B, F]`` is True and 0 elsewhere, so ``||x^a - A(x_hat)||^2`` sums over the
    known frames only. ``x [B, C, F, H, W] -> [B, C, F, H, W]``."""
    view = _frame_view(known)

    def A(x: Tensor) -> Tensor:
        return x * _normal(view).to(x.dtype)

    return A


def spatial_downsampling(size: tuple[int, int]) -> Operator:
    """Observation operator for spatial super-resolution (VDM section 3.1, eq. 8): x_hat^a is the
    model's reconstruction downsampled to the low resolution ``size = (h, w)`` with a differentiable
    (antialiased bilinear) resize. ``x [B, C, F, H, W] -> [B, C, F, h, w]``."""
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"the low resolution must be positive, got {size}")
    return lambda x: resize_video(x, size)


def replacement(denoise: Denoise, x_a: Tensor, known: Tensor, *,
                generator: Optional[torch.Generator] = None, noise: NoisePrior = standard_normal) -> Denoise:
    """The replacement method (VDM, Ho et al. 2022, section 3.1; Song et al. 2021 "score-based
    inpainting"): before every model call the known part of z is overwritten by a fresh
    forward-noised copy of the data, z_s^a = alpha_s x^a + sigma_s eps, eps ~ N(0, I); the model
    then predicts x_hat^b from [z_s^a, z_s^b].

    ``x_a [B, C, F, H, W]`` holds the known frames (values on unknown frames are ignored);
    ``known [B, F]`` bool marks them. The returned prediction is x^a itself on the known frames
    (with eps the noise drawn), so z stays a forward-noised copy of x^a there and every sampler's
    last step onto clean data (log-SNR = +inf) returns the known frames exactly. eps is drawn from
    the model's noise prior ``noise`` (diffusion/noise.py) over the whole video, of which the known
    frames take their part.
    """
    view = _frame_view(known)

    def denoise_replaced(z: Tensor, logsnr: Tensor) -> Prediction:
        alpha, sigma = coefficients(logsnr, z)
        eps = noise(z.shape, generator, z.device, z.dtype)
        x = x_a.to(z)
        z = torch.where(view, alpha * x + sigma * eps, z)  # [B, C, F, H, W]
        pred = denoise(z, logsnr)
        return Prediction(torch.where(view, x, pred.x), torch.where(view, eps, pred.eps))

    return denoise_replaced


def reconstruction_guidance(denoise: Denoise, y: Tensor, A: Operator, w_r: float,
                            correct: Optional[Tensor] = None) -> Denoise:
    """Reconstruction guidance (VDM, Ho et al. 2022, section 3.1, eqs. 7 and 8):

        x_tilde(z_t) = x_hat(z_t) - (w_r alpha_t / 2) grad_{z_t} ||y - A(x_hat(z_t))||^2,

    where y = x^a is the observation and A the observation operator (:func:`frame_selection`,
    :func:`spatial_downsampling`). It approximates E[x | z_t, x^a] with q(x^a | z_t) ~
    N(x_hat^a, sigma_t^2 / alpha_t^2 I); w_r = 1 is that approximation, VDM uses w_r > 1.
    ``correct [B, F]`` bool restricts the correction to those frames (eq. 7 corrects x_hat^b, the
    unknown frames, only); None corrects everywhere (eq. 8). eps_hat is recomputed from x_tilde so
    the prediction stays consistent with z.

    The gradient needs autograd through the model. The wrapper turns it on locally (leaving
    inference mode if the sampler runs inside it, and cloning inference tensors it is handed), so
    callers may sample under ``torch.inference_mode()`` or ``torch.no_grad()``; tensors bound into
    ``denoise`` (e.g. conditioning) should not be inference tensors. Costs one backward pass per step.
    """
    view = None if correct is None else _frame_view(correct)

    def denoise_guided(z: Tensor, logsnr: Tensor) -> Prediction:
        with torch.inference_mode(False), torch.enable_grad():
            z_in = _normal(z).detach().requires_grad_(True)
            pred = denoise(z_in, _normal(logsnr))
            err = (_normal(y).to(pred.x) - A(pred.x)).square().sum()
            (grad,) = torch.autograd.grad(err, z_in)  # [B, C, F, H, W]
        alpha, sigma = coefficients(logsnr, z)
        step = (w_r * alpha / 2) * grad.to(z.dtype)
        if view is not None:
            step = step * view.to(step.dtype)
        x = pred.x.detach() - step
        return Prediction(x, eps_from_x(z, x, alpha, sigma))

    return denoise_guided
