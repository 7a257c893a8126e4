"""Parameterizations (eps / x / v), their exact conversions, and the training loss.

With z = alpha x + sigma eps (variance preserving, alpha^2 + sigma^2 = 1) a network output can
predict the noise eps, the data x, or the velocity v = alpha eps - sigma x (Salimans & Ho 2022,
"Progressive Distillation", eq. 7 / appendix D). Given z and lambda each determines the others:

    x = (z - sigma eps) / alpha        eps = (z - alpha x) / sigma
    x = alpha z - sigma v              eps = sigma z + alpha v

v-prediction is EDM's preconditioning (Karras et al. 2022, "Elucidating the Design Space", Table 1)
with sigma_data = 1, written for a variance-preserving z. ``sigma_data`` s != 1 moves where the
network's output switches from predicting the data to correcting z (see :func:`preconditioning`).

The training side is an *objective*: a configured callable ``objective(parts, batch, rng) ->
(loss, logs)`` (:class:`DiffusionObjective`), the only code that knows what a training step
computes; the trainer runs it and knows no diffusion.

Tensor shapes: ``z, x, eps, v`` are ``[B, ...]`` (videos ``[B, C, F, H, W]``); ``alpha``, ``sigma``
are broadcastable to them (``[B, 1, 1, 1, 1]``) or Python floats; ``logsnr`` is ``[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Protocol

import torch
from torch import Tensor

from kinema.conditioning import with_self_cond
from kinema.diffusion.noise import NoisePrior, standard_normal
from kinema.diffusion.schedule import Schedule, alpha_sigma

Parameterization = Literal["eps", "x", "v"]
PARAMETERIZATIONS = ("eps", "x", "v")
WEIGHTINGS = ("eps", "x", "v", "min_snr")
T_SAMPLINGS = ("uniform", "stratified")


class Prediction(NamedTuple):
    """The denoiser's estimate of the clean data and of the noise; both ``[B, ...]``."""

    x: Tensor
    eps: Tensor


# A sampler-ready denoiser: ``denoise(z [B, ...], logsnr [B]) -> Prediction``, conditioning and guidance
# already applied. The one type samplers, guidance wrappers and pipelines pass around.
Denoise = Callable[[Tensor, Tensor], Prediction]


def broadcast_to(values: Tensor, like: Tensor) -> Tensor:
    """Reshape per-example values ``[B]`` to ``[B, 1, ..., 1]`` matching ``like``'s rank."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def coefficients(logsnr: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha, sigma for per-example ``logsnr [B]``, computed in float64, cast to ``like.dtype``
    and shaped ``[B, 1, ..., 1]`` for broadcasting against ``like [B, ...]``."""
    alpha, sigma = alpha_sigma(logsnr.detach().to("cpu", torch.float64) if logsnr.device.type == "mps" else logsnr)
    alpha = broadcast_to(alpha.to(like.dtype), like).to(like.device)
    sigma = broadcast_to(sigma.to(like.dtype), like).to(like.device)
    return alpha, sigma


def x_from_eps(z: Tensor, eps: Tensor, alpha, sigma) -> Tensor:
    """x = (z - sigma eps) / alpha  (from z = alpha x + sigma eps; Ho et al. 2020 eq. 15)."""
    return (z - sigma * eps) / alpha


def eps_from_x(z: Tensor, x: Tensor, alpha, sigma) -> Tensor:
    """eps = (z - alpha x) / sigma  (from z = alpha x + sigma eps)."""
    return (z - alpha * x) / sigma


def v_from_x_eps(x: Tensor, eps: Tensor, alpha, sigma) -> Tensor:
    """v = alpha eps - sigma x  (Salimans & Ho 2022, Progressive Distillation, section 4)."""
    return alpha * eps - sigma * x


def x_from_v(z: Tensor, v: Tensor, alpha, sigma) -> Tensor:
    """x = alpha z - sigma v  (Salimans & Ho 2022, appendix D; uses alpha^2 + sigma^2 = 1)."""
    return alpha * z - sigma * v


def eps_from_v(z: Tensor, v: Tensor, alpha, sigma) -> Tensor:
    """eps = sigma z + alpha v  (Salimans & Ho 2022, appendix D; uses alpha^2 + sigma^2 = 1)."""
    return sigma * z + alpha * v


def check_parameterization(parameterization: str, sigma_data: float = 1.0) -> None:
    """ValueError naming the value unless ``parameterization`` is known and ``sigma_data`` fits it (> 0, and
    != 1 only for v). Objectives call it when built, so a bad config fails before the first step."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
    if not sigma_data > 0:
        raise ValueError(f"diffusion.sigma_data must be > 0, got {sigma_data:g}")
    if sigma_data != 1.0 and parameterization != "v":
        raise ValueError(f"diffusion.sigma_data={sigma_data:g} applies to parameterization 'v' only, "
                         f"got parameterization {parameterization!r}")


def preconditioning(alpha, sigma, sigma_data: float) -> tuple:
    """EDM's skip and output scales (Karras et al. 2022, Table 1 and appendix B.6) for
    z = alpha x + sigma eps: with D^2 = alpha^2 s^2 + sigma^2 and s = ``sigma_data``,

        x_hat = c_skip z - c_out F,   c_skip = alpha s^2 / D^2,   c_out = sigma s / D,

    the choice that gives the target F unit variance for data of second moment s^2. s = 1 is
    v-prediction (D = 1: x_hat = alpha z - sigma v). The output switches from predicting the data
    (c_skip ~ 0) to correcting z (c_skip alpha ~ 1) around SNR = 1 / s^2, i.e. log-SNR = -2 log s.
    Returns ``(c_skip, c_out, D)``, broadcast like ``alpha``."""
    d = (alpha * alpha * sigma_data ** 2 + sigma * sigma) ** 0.5
    return alpha * sigma_data ** 2 / d ** 2, sigma * sigma_data / d, d


def prediction_from_output(output: Tensor, z: Tensor, alpha, sigma, parameterization: Parameterization,
                           sigma_data: float = 1.0) -> Prediction:
    """Turn a network output in ``parameterization`` into (x_hat, eps_hat), given z_t.

    Shapes: ``output, z [B, ...]``; ``alpha, sigma`` broadcastable. Exact inverse of
    :func:`output_from_prediction`. ``sigma_data`` (v only, see :func:`preconditioning`):
    eps_hat = (z - alpha x_hat) / sigma = sigma z / D^2 + alpha s F / D, with no division by sigma.
    """
    check_parameterization(parameterization, sigma_data)
    if parameterization == "eps":
        return Prediction(x_from_eps(z, output, alpha, sigma), output)
    if parameterization == "x":
        return Prediction(output, eps_from_x(z, output, alpha, sigma))
    if sigma_data == 1.0:
        return Prediction(x_from_v(z, output, alpha, sigma), eps_from_v(z, output, alpha, sigma))
    c_skip, c_out, d = preconditioning(alpha, sigma, sigma_data)
    return Prediction(c_skip * z - c_out * output, sigma * z / d ** 2 + alpha * sigma_data * output / d)


def output_from_prediction(x: Tensor, eps: Tensor, alpha, sigma, parameterization: Parameterization,
                           sigma_data: float = 1.0) -> Tensor:
    """The target a network in ``parameterization`` should output for data x and noise eps.
    With ``sigma_data`` s (v only): F = (c_skip z - x) / c_out = (alpha s^2 eps - sigma x) / (s D)."""
    check_parameterization(parameterization, sigma_data)
    if parameterization == "eps":
        return eps
    if parameterization == "x":
        return x
    if sigma_data == 1.0:
        return v_from_x_eps(x, eps, alpha, sigma)
    _, _, d = preconditioning(alpha, sigma, sigma_data)
    return (alpha * sigma_data ** 2 * eps - sigma * x) / (sigma_data * d)


Net = Callable[..., Tensor]


class Denoiser:
    """Wrap a backbone ``net(z_t, logsnr, cond) -> output`` into ``(z, logsnr, cond) -> Prediction``.

    This is the one place where the parameterization is interpreted (DESIGN.md section 3), so
    samplers, guidance and distillation work with any backbone and parameterization.
    ``logsnr`` may be a float or a ``[B]`` tensor; the backbone receives ``[B]`` in z's dtype.
    """

    def __init__(self, net: Net, parameterization: Parameterization = "v", sigma_data: float = 1.0) -> None:
        check_parameterization(parameterization, sigma_data)
        self.net = net
        self.parameterization = parameterization
        self.sigma_data = sigma_data

    def __call__(self, z: Tensor, logsnr, cond=None) -> Prediction:
        logsnr = torch.as_tensor(logsnr, dtype=torch.float64, device=z.device)
        if logsnr.ndim == 0:
            logsnr = logsnr.expand(z.shape[0])
        output = self.net(z, logsnr.to(z.dtype), cond).to(z.dtype)
        alpha, sigma = coefficients(logsnr, z)
        return prediction_from_output(output, z, alpha, sigma, self.parameterization, self.sigma_data)


def sample_t(batch: int, method: str = "stratified", *, generator: Optional[torch.Generator] = None,
             device=None) -> Tensor:
    """Training times t ~ U(0, 1), ``[batch]`` float64.

    ``"uniform"``: i.i.d. ``"stratified"``: the low-discrepancy sampler of Kingma et al. 2021
    (Variational Diffusion Models, appendix I.1): t_i = (u + i / B) mod 1 with one shared u, which
    lowers the variance of the batch loss.
    """
    if method == "uniform":
        return torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
    if method == "stratified":
        u = torch.rand(1, generator=generator, dtype=torch.float64, device=device)
        return torch.remainder(u + torch.arange(batch, dtype=torch.float64, device=device) / batch, 1.0)
    raise ValueError(f"unknown t sampling {method!r}; choose one of {T_SAMPLINGS}")


def _check_weight_options(high_noise_weight: float, max_weight: float) -> None:
    if not high_noise_weight > 0:
        raise ValueError(f"diffusion.high_noise_weight must be > 0, got {high_noise_weight}")
    if not max_weight >= 0:
        raise ValueError(f"diffusion.max_weight must be >= 0 (0: no cap), got {max_weight:g}")


def loss_weight(logsnr: Tensor, weighting: str, parameterization: Parameterization, min_snr_gamma: float = 5.0,
                high_noise_weight: float = 1.0, max_weight: float = 0.0, sigma_data: float = 1.0) -> Tensor:
    """Per-example factor that turns the MSE in the parameterization's own space into the
    chosen weighting. ``logsnr [B]`` -> ``[B]`` float64.

    The errors are proportional: eps - eps_hat = -(alpha/sigma)(x - x_hat) and
    v - v_hat = -(1/sigma)(x - x_hat), so in units of the x-error ||x - x_hat||^2 the three
    plain losses weigh by 1 (x), SNR (eps) and 1 + SNR (v), with SNR = exp(lambda). Min-SNR-gamma
    (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting", eq. 6) weighs the
    x-error by min(SNR, gamma). The factor is w_target / w_parameterization.

    ``high_noise_weight`` h multiplies any of them by 1 + (h - 1) sigmoid(-lambda): h at the
    high-noise end, (1 + h) / 2 at lambda = 0, 1 at the low-noise end; h = 1 leaves the weighting as it is.
    ``max_weight`` (> 0) caps the result, in x-error units. It matters for an x-predicting net trained
    with the v weighting (as in JiT, Li & He 2025, "Back to Basics: Let Denoising Generative Models
    Denoise"): there the weight 1 + SNR grows without bound at the low-noise end (~3e6 at log-SNR 15);
    400 stops it at log-SNR ~6. 0 leaves it uncapped.
    With ``sigma_data`` s the v output's error is the x-error over c_out^2, i.e. weighs SNR + 1 / s^2 in
    x-error units (:func:`preconditioning`); the weightings stay what they are in x-error units, so
    ``weighting="v"`` keeps 1 + SNR whatever s is.
    """
    _check_weight_options(high_noise_weight, max_weight)
    check_parameterization(parameterization, sigma_data)
    snr = torch.exp(logsnr.to(torch.float64))
    weightings = {"x": torch.ones_like(snr), "eps": snr, "v": 1.0 + snr}  # in x-error units
    # a unit squared error of each parameterization's output, in x-error units
    output_error = {"x": weightings["x"], "eps": snr, "v": snr + 1.0 / sigma_data ** 2}
    if weighting == "min_snr":
        target = torch.clamp(snr, max=min_snr_gamma)
    elif weighting in weightings:
        target = weightings[weighting]
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {WEIGHTINGS}")
    if high_noise_weight != 1.0:
        target = target * (1.0 + (high_noise_weight - 1.0) * torch.sigmoid(-logsnr.to(torch.float64)))
    if max_weight > 0:
        target = torch.clamp(target, max=max_weight)
    return target / output_error[parameterization]


@dataclass
class LossOutput:
    loss: Tensor  # scalar, mean over the batch
    per_example: Tensor  # [B]
    t: Tensor  # [B] float64
    logsnr: Tensor  # [B] float64


def diffusion_loss(
    net: Net,
    x: Tensor,
    cond=None,
    *,
    schedule: Schedule = Schedule(),
    parameterization: Parameterization = "v",
    weighting: str = "v",
    min_snr_gamma: float = 5.0,
    high_noise_weight: float = 1.0,
    max_weight: float = 0.0,
    sigma_data: float = 1.0,
    t_sampling: str = "stratified",
    generator: Optional[torch.Generator] = None,
    noise: Optional[Tensor] = None,
    t: Optional[Tensor] = None,
    frame_weight: Optional[Tensor] = None,
) -> LossOutput:
    """Denoising loss for one batch (Ho et al. 2020 eq. 14, in continuous time as in Kingma et
    al. 2021; weightings per :func:`loss_weight`).

    ``x [B, C, F, H, W]`` clean data in [-1, 1]; samples t (or uses the given ``t [B]``), forms
    z_t = alpha_t x + sigma_t eps, calls ``net(z_t, logsnr, cond)`` and returns the weighted MSE
    against the parameterization's target. ``frame_weight [B, F]`` (optional) weighs frames, e.g.
    zero for known context frames.
    """
    batch = x.shape[0]
    if t is None:
        t = sample_t(batch, t_sampling, generator=generator, device=x.device)
    logsnr = schedule.logsnr(t.to(torch.float64))
    if noise is None:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    alpha, sigma = coefficients(logsnr, x)
    z = alpha * x + sigma * noise
    output = net(z, logsnr.to(x.dtype), cond)
    target = output_from_prediction(x, noise, alpha, sigma, parameterization, sigma_data)
    sq = (output.float() - target.float()).pow(2)
    if frame_weight is not None:
        fw = frame_weight.to(sq.dtype)[:, None, :, None, None]
        per_example = (sq * fw).flatten(1).sum(1) / (fw.flatten(1).sum(1) * sq[0, :, 0].numel()).clamp_min(1e-8)
    else:
        per_example = sq.flatten(1).mean(1)
    weight = loss_weight(logsnr, weighting, parameterization, min_snr_gamma, high_noise_weight,
                         max_weight, sigma_data).to(per_example)
    per_example = per_example * weight
    return LossOutput(per_example.mean(), per_example, t, logsnr)


# ---- objectives -------------------------------------------------------------------------------------


@dataclass
class TrainBatch:
    """What an objective gets per micro-batch: ``x [B, C, F, H, W]`` (data already in the model's space),
    its ``cond``, the collated ``data`` dict it came from (captions, labels, raw pixels, ...) and the
    optimizer ``step`` it trains (for terms that switch on later, e.g. a discriminator's ``disc_start``).
    ``pixels``: the clip in pixels before the space encoded it (the trainer sets it; None: ``x`` is
    the pixels). Hooks that declare ``reads_pixels`` get it instead of ``x`` (:func:`hook_input`)."""

    x: Tensor
    cond: Any
    data: dict
    step: int = 0
    pixels: Optional[Tensor] = None


def hook_input(hook, batch: TrainBatch) -> Tensor:
    """What a conditioning hook is called with: the pixel clip for a hook with ``reads_pixels = True``
    (e.g. the low-resolution input of a latent upsampler, Video LDM section 3.2, derived from pixels
    before encoding), else ``batch.x`` (the data in the model's space)."""
    if getattr(hook, "reads_pixels", False) and batch.pixels is not None:
        return batch.pixels
    return batch.x


class BatchRandom(Protocol):
    """Randomness of an objective. ``draw(fn)`` calls ``fn(n)`` to make ``[n, ...]`` values for the n
    items of the *global* micro-batch and returns this process's rows, so N processes train like
    one (``fn`` must use :attr:`generator`); :meth:`uniform` is ``[B]`` U(0, 1) draws through it."""

    generator: torch.Generator

    def draw(self, fn: Callable[[int], Tensor]) -> Tensor: ...

    def uniform(self, n: int) -> Tensor: ...


class LocalRandom:
    """:class:`BatchRandom` for one process: the global micro-batch is the local one."""

    def __init__(self, generator: torch.Generator, batch: int) -> None:
        self.generator, self.batch = generator, batch

    def draw(self, fn: Callable[[int], Tensor]) -> Tensor:
        return fn(self.batch)

    def uniform(self, n: int) -> Tensor:
        if n != self.batch:
            raise ValueError(f"uniform draws one value per item of the micro-batch ({self.batch}), asked for {n}")
        return torch.rand(n, generator=self.generator, device=self.generator.device)


SELF_CONDITION_PROB = 0.5  # Chen et al. 2022 (Analog Bits), section 3: self-condition half of the training steps


def self_conditioned(net: Net, use: Tensor, parameterization: Parameterization, sigma_data: float = 1.0) -> Net:
    """Self-conditioning in training (Chen et al. 2022, "Analog Bits", section 3, Algorithm 1):
    ``net'(z_t, logsnr, cond)`` where the items with ``use [B]`` (bool) first get an estimate
    ``x_hat = x(net(z_t, logsnr, cond without estimate))`` from a pass *without gradient*, then the trained
    pass takes it as ``cond.self_cond`` (stop-gradient); the other items get ``self_cond = 0``, what the
    model sees at the first sampling step. Only the ``use`` rows run the first pass (one host sync for
    their indices); ``net`` must read ``cond.self_cond`` (spec ``reads`` has ``"self_cond"``)."""

    def net_with_estimate(z: Tensor, logsnr: Tensor, cond=None) -> Tensor:
        x_hat = torch.zeros_like(z)  # [B, C, F, H, W]
        rows = use.to(z.device).nonzero().flatten()
        if rows.numel():
            with torch.no_grad():
                sub = with_self_cond(cond, None).map(lambda t: t[rows])
                z_s, logsnr_s = z[rows], logsnr[rows]
                alpha, sigma = coefficients(logsnr_s.to(torch.float64), z_s)
                x_hat[rows] = prediction_from_output(net(z_s, logsnr_s, sub).to(z.dtype), z_s, alpha, sigma,
                                                     parameterization, sigma_data).x
        return net(z, logsnr, with_self_cond(cond, x_hat))

    return net_with_estimate


def segments_for(segments: Optional[Tensor], n: int) -> Optional[Tensor]:
    """Frame segments ``[n, F]`` for a draw of ``n`` items (the global batch when several processes train):
    the local ones when n matches, else the common pattern when every local item has the same one."""
    if segments is None or segments.shape[0] == n:
        return segments
    if not bool((segments == segments[:1]).all()):
        raise ValueError("frame-correlated noise over several processes needs the same frame_segments for every item")
    return segments[:1].expand(n, -1)


ConditioningHook = Callable[[Tensor, Any, BatchRandom], "tuple[Any, Optional[Tensor]]"]


@dataclass
class DiffusionObjective:
    """The denoising objective (:func:`diffusion_loss`) with its conditioning hooks, as a configured
    callable ``objective(parts, batch, rng) -> (loss, logs)``.

    ``parts["model"]`` is the network ``net(z_t, logsnr, cond)``. ``hooks`` run in order on the
    batch's conditioning before noise is drawn, each ``hook(x, cond, rng) -> (cond, frame_weight)``
    (``frame_weight [B, F]`` or None; weights multiply): e.g. dropping text / labels for
    classifier-free guidance, adding known context frames. ``self_condition`` (a probability; 0: off)
    trains a backbone that reads ``cond.self_cond`` with :func:`self_conditioned`. Random draws, in order:
    the hooks', then t, then the noise, then (with self-conditioning) one U(0, 1) per item, all through
    ``rng``. ``logs`` are detached scalar tensors (no host sync). ``high_noise_weight`` scales the
    weighting towards the high-noise end, ``max_weight`` caps it (:func:`loss_weight`); ``sigma_data`` is the v
    output's preconditioning (:func:`preconditioning`).
    """

    schedule: Schedule
    parameterization: Parameterization = "v"
    weighting: str = "v"
    min_snr_gamma: float = 5.0
    t_sampling: str = "stratified"
    hooks: tuple = ()
    self_condition: float = 0.0
    noise: NoisePrior = standard_normal  # the forward process's noise prior (diffusion/noise.py)
    high_noise_weight: float = 1.0
    max_weight: float = 0.0
    sigma_data: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.self_condition <= 1.0:
            raise ValueError(f"self_condition is a probability in [0, 1], got {self.self_condition}")
        _check_weight_options(self.high_noise_weight, self.max_weight)  # at build time, not at the first step
        check_parameterization(self.parameterization, self.sigma_data)

    def __call__(self, parts: Mapping[str, Callable], batch: TrainBatch, rng: BatchRandom) -> tuple[Tensor, dict]:
        x, cond, frame_weight = batch.x, batch.cond, None
        for hook in self.hooks:
            cond, weight = hook(hook_input(hook, batch), cond, rng)
            if weight is not None:
                frame_weight = weight if frame_weight is None else frame_weight * weight
        t = rng.draw(lambda n: sample_t(n, self.t_sampling, generator=rng.generator, device=x.device))
        segments = getattr(cond, "frame_segments", None)
        noise = rng.draw(lambda n: self.noise((n, *x.shape[1:]), rng.generator, x.device, x.dtype,
                                              segments_for(segments, n)))
        net = parts["model"]
        if self.self_condition > 0:
            net = self_conditioned(net, rng.uniform(x.shape[0]) < self.self_condition, self.parameterization,
                                   self.sigma_data)
        out = diffusion_loss(net, x, cond, schedule=self.schedule, parameterization=self.parameterization,
                             weighting=self.weighting, min_snr_gamma=self.min_snr_gamma,
                             high_noise_weight=self.high_noise_weight, max_weight=self.max_weight,
                             sigma_data=self.sigma_data, t=t, noise=noise,
                             frame_weight=frame_weight)
        return out.loss, {"loss": out.loss.detach()}
