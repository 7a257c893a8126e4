"""Unconditional / conditional video sampling from a trained system, with classifier-free guidance
over text and class labels (constant weight, or Imagen Video's oscillating guidance), and the
sampling helpers every pipeline shares (sampler settings, the autocast denoiser, conditioning).

Pipelines take a :class:`~kinema.system.System`: its space gives the shape of z, the sampler's
thresholding and the decoding of samples, so nothing here assumes pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from kinema.conditioning import LABEL_FIELDS, Conditioning, drop_conditioning, with_context, with_self_cond
from kinema.config import KinemaConfig
from kinema.diffusion.distill import with_guidance_weight
from kinema.diffusion.guidance import (Interval, Weight, guidance_interval, guided_denoiser, oscillating_guidance_weights,
                                      weight_by_logsnr)
from kinema.diffusion.noise import NoisePrior, standard_normal
from kinema.diffusion.objective import Denoise, Denoiser, Prediction
from kinema.diffusion.samplers import get_sampler
from kinema.diffusion.schedule import sampling_grid
from kinema.diffusion.superres import augment_lowres, with_lowres
from kinema.system import System, autocast, autocast_dtype, build_schedule, distilled_steps
from kinema.validate import require_finite


@dataclass
class SamplerSettings:
    """A sampler with its time grid and options, resolved from ``cfg.sample`` and explicit overrides."""

    fn: Callable[..., torch.Tensor]
    grid: torch.Tensor  # log-SNR grid, float64 [steps + 1]
    steps: int
    thresholding: Optional[str]
    extra: dict
    noise: NoisePrior = standard_normal  # the system's noise prior: initial z and ancestral noise

    @classmethod
    def from_system(cls, system: System, *, steps: Optional[int] = None, sampler: Optional[str] = None,
                    eta: Optional[float] = None, spacing: Optional[str] = None,
                    thresholding: Optional[str] = "config") -> "SamplerSettings":
        """Settings from ``system.cfg.sample`` with explicit overrides (None: the config's); the
        space decides which thresholding applies."""
        system.require_generative()  # an autoencoder cannot sample
        s = system.cfg.sample
        steps = s.steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {steps}")
        check_distilled_steps(system, steps)
        name = sampler or s.sampler
        eta = s.eta if eta is None else eta
        threshold = system.space.thresholding(s.thresholding if thresholding == "config" else thresholding)
        return cls(get_sampler(name), sampling_grid(build_schedule(system.cfg), steps, spacing or s.spacing), steps,
                   threshold, {"eta": eta} if name == "ddim" else {}, system.noise)

    def initial(self, shape, generator: Optional[torch.Generator], device) -> torch.Tensor:
        """The sampler's starting point: pure noise of ``shape`` drawn from the noise prior."""
        return self.noise(shape, generator, device)

    def __call__(self, denoise, z: torch.Tensor, *, generator=None, callback=None) -> torch.Tensor:
        return self.fn(denoise, z, self.grid, generator=generator, thresholding=self.thresholding,
                       callback=callback, noise=self.noise, **self.extra)


def check_distilled_steps(system: System, steps: int) -> None:
    """A progressive-distillation student learned one DDIM step per pair of its teacher's steps on its
    own N-step grid; on any other grid it was never trained (its jumps would be too long or too short),
    so sampling it with other steps is an error, not a warning."""
    n = distilled_steps(system.cfg)
    if n is not None and steps != n:
        raise ValueError(f"this model is a distilled student for {n} sampling steps (distill.student_steps={n}); "
                         f"{steps} steps is not what it was trained for: sample it with --steps {n}, or sample its "
                         f"teacher ({system.cfg.distill.teacher}) for other step counts")


def complete_context(system: System, cond: Optional[Conditioning], z: torch.Tensor) -> Optional[Conditioning]:
    """A context model always takes context channels: give it the null context (no known frame)
    when ``cond`` sets none. ``z [B, C, F, H, W]``. Other models: ``cond`` unchanged."""
    if not system.is_context_model or (cond is not None and cond.context is not None):
        return cond
    return with_context(cond, torch.zeros_like(z), torch.zeros(z.shape[0], z.shape[2], dtype=torch.bool,
                                                                  device=z.device))


def output_channels(system: System) -> int:
    """Channels of the videos a system outputs and of the low-resolution video an SR stage reads: pixels,
    decoded by the autoencoder of a latent space (a latent base hands the next stage decoded video, and a
    latent upsampler reads low-resolution pixels, not latents)."""
    autoencoder = getattr(system.space, "autoencoder", None)
    return system.space.channels if autoencoder is None else autoencoder.in_channels


def lowres_conditioning(system: System, lowres: torch.Tensor, cond: Optional[Conditioning] = None, *,
                        level: Optional[float] = None, generator: Optional[torch.Generator] = None,
                        what: str = "the low-resolution input") -> Conditioning:
    """``cond`` with the low-resolution video an SR stage (``system.is_sr_stage``) generates from:
    ``lowres [B, C, F', H', W']`` in [-1, 1] checked against the stage's input shape (``sr`` factors
    of its ``data.num_frames`` x ``data.size``^2), then augmented at the fixed level ``level`` (default
    ``sr.sample_aug``; 0: unchanged) with ``generator`` (Imagen Video section 2.5). One clear error
    naming the checkpoint's expectation for a base model or a wrong shape."""
    sr = system.cfg.sr
    if not system.is_sr_stage:
        raise ValueError(f"{what} was given to a model that is not a super-resolution stage (its config has "
                         f"sr.spatial_factor={sr.spatial_factor}, sr.temporal_factor={sr.temporal_factor})")
    d = system.cfg.data
    frames, size = sr.input_shape(d.num_frames, d.size)
    want = (output_channels(system), frames, size, size)
    if lowres.ndim != 5 or tuple(lowres.shape[1:]) != want:
        raise ValueError(f"this SR stage (x{sr.temporal_factor} frames, x{sr.spatial_factor} size -> "
                         f"{d.num_frames}x{d.size}x{d.size}) takes [B, C, F, H, W] = [B, {', '.join(map(str, want))}] "
                         f"low-resolution videos; {what} is {list(lowres.shape)}")
    level = sr.sample_aug if level is None else level
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"the augmentation level is a time t_aug in [0, 1], got {level}")
    t_aug = torch.full((lowres.shape[0],), float(level), dtype=torch.float64, device=lowres.device)
    noised, logsnr = augment_lowres(lowres, t_aug, build_schedule(system.cfg), generator=generator)
    return with_lowres(cond, noised, logsnr if "lowres_logsnr" in system.spec.reads else None)


class SamplingNet:
    """``net(z, logsnr, cond) -> Prediction``: the system's model wrapped by :class:`Denoiser` in the
    config's parameterization, each call under bf16 autocast on CUDA (``precision``, see
    ``autocast_dtype``). The one place sampling pipelines turn a backbone into a denoiser.

    Self-conditioning (Chen et al. 2022, "Analog Bits", Algorithm 2), when the backbone's spec reads
    ``self_cond``: samplers are stateless, so the estimate lives here. :meth:`track` wraps the
    sampler-ready denoiser of one sampling run (after guidance, reconstruction guidance, replacement)
    and remembers the x_hat of each of its calls; every model call of the next step gets that x_hat as
    ``cond.self_cond`` (zeros before the first step). A classifier-free-guided call of 2B items gets
    the same (guided) x_hat for its conditional and unconditional halves."""

    def __init__(self, system: System, precision: str = "auto") -> None:
        self.device = system.device
        self.amp = autocast_dtype(precision, self.device)
        self.denoiser = Denoiser(system.model, system.cfg.diffusion.parameterization, system.cfg.diffusion.sigma_data)
        self.self_conditioned = "self_cond" in system.spec.reads
        self.x_hat: Optional[torch.Tensor] = None  # [B, C, F, H, W], the last estimate of this run

    def __call__(self, z: torch.Tensor, logsnr: torch.Tensor, cond: Optional[Conditioning]) -> Prediction:
        if self.self_conditioned:
            cond = with_self_cond(cond, self.estimate(z))
        with autocast(self.device, self.amp):
            return self.denoiser(z, logsnr, cond)

    def estimate(self, z: torch.Tensor) -> Optional[torch.Tensor]:
        """The last x_hat for a call on ``z [k*B, ...]`` (repeated k times; k = 2 under guidance), or None."""
        if self.x_hat is None:
            return None
        b, n = self.x_hat.shape[0], z.shape[0]
        if n % b or z.shape[1:] != self.x_hat.shape[1:]:
            raise ValueError(f"self-conditioning: a call on z of shape {tuple(z.shape)} after an estimate of "
                             f"shape {tuple(self.x_hat.shape)}; use one track() per sampling run")
        return torch.cat([self.x_hat] * (n // b)) if n > b else self.x_hat

    def track(self, denoise: Denoise) -> Denoise:
        """``denoise`` (a sampling run's outermost denoiser) remembering each prediction's x as the next
        estimate; starts a new run (no estimate). Returns ``denoise`` itself for other backbones."""
        self.x_hat = None
        if not self.self_conditioned:
            return denoise

        def tracked(z: torch.Tensor, logsnr: torch.Tensor) -> Prediction:
            pred = denoise(z, logsnr)
            self.x_hat = pred.x.detach()
            return pred

        return tracked


def autocast_denoiser(system: System, precision: str = "auto") -> SamplingNet:
    """The system's model as a sampling :class:`SamplingNet` ``net(z, logsnr, cond) -> Prediction``."""
    return SamplingNet(system, precision)


def labelled(cond: Optional[Conditioning]) -> bool:
    """Does ``cond`` carry text or class labels (what classifier-free guidance guides towards)?"""
    return cond is not None and (cond.text_emb is not None or cond.class_labels is not None)


def label_guided(net, cond: Optional[Conditioning], weight: "Weight") -> Denoise:
    """``denoise(z, logsnr)`` for ``net(z, logsnr, cond)``: classifier-free guidance with ``weight``
    against ``cond`` without its text and labels when ``cond`` carries some, else plain ``cond``."""
    if labelled(cond):
        return guided_denoiser(net, cond, drop_conditioning(cond, fields=LABEL_FIELDS), weight)
    return lambda z, logsnr: net(z, logsnr, cond)


def guidance_input(net, cond: Optional[Conditioning], weight: "Weight") -> Denoise:
    """``denoise(z, logsnr)`` for a guided student (Meng et al. 2023), which takes the guidance weight as
    its input ``cond.guidance_weight``: one pass per step instead of classifier-free guidance's two.
    ``weight``: a float, a ``[B]`` tensor or a function of the noise level (oscillating guidance)."""

    def denoise(z: torch.Tensor, logsnr: torch.Tensor):
        w = weight(logsnr) if callable(weight) else weight
        w = torch.as_tensor(w, dtype=z.dtype, device=z.device).expand(z.shape[0])
        return net(z, logsnr, with_guidance_weight(cond, w))

    return denoise


def apply_guidance(system: System, net, cond: Optional[Conditioning], weight: "Weight") -> Denoise:
    """The sampler-ready denoiser with guidance ``weight``: fed as an input to a guided student
    (:func:`guidance_input`), else classifier-free guidance over the labels (:func:`label_guided`)."""
    if "guidance_weight" in system.spec.reads:
        return guidance_input(net, cond, weight)
    return label_guided(net, cond, weight)


def _cycle(values: Sequence, num: int) -> list:
    return [values[i % len(values)] for i in range(num)]


@torch.no_grad()
def make_conditioning(system: System, num: int, *, prompts: Optional[Sequence[str]] = None,
                      class_labels: Optional[Sequence[int]] = None) -> Optional[Conditioning]:
    """Conditioning for ``num`` samples: prompts and / or class labels, each list cycled over the
    samples (sample i gets ``prompts[i % len(prompts)]``). Text embeddings come from the model's own
    text encoder (:class:`~kinema.models.text.TextConditioned`). None when neither is given."""
    if not prompts and not class_labels:
        return None
    device = system.device
    cond = Conditioning()
    if prompts:
        cond.text_emb, cond.text_mask = system.encode_text(_cycle(list(prompts), num))
    if class_labels:
        classes = system.spec.num_classes
        bad = [k for k in class_labels if not 0 <= int(k) < classes]
        if classes < 1 or bad:
            raise ValueError(f"class label {bad[0] if bad else class_labels[0]} is not valid for this model "
                             f"(the model has num_classes={classes})")
        cond.class_labels = torch.tensor(_cycle([int(k) for k in class_labels], num), dtype=torch.long, device=device)
    return cond


def guidance_weight(cfg: KinemaConfig, grid: torch.Tensor, guidance: Optional[float] = None,
                    guidance_low: Optional[float] | str = "config", interval: Optional[Interval] | str = "config") -> Weight:
    """The guidance weight to sample with: ``guidance`` (default ``cfg.sample.guidance``), or with
    ``guidance_low`` set (default ``cfg.sample.guidance_low``) Imagen Video's oscillating weights
    over the steps of ``grid`` as a function of the noise level; limited to the log-SNR ``interval``
    (default ``cfg.sample.guidance_interval``; :func:`~kinema.diffusion.guidance.guidance_interval`)."""
    s = cfg.sample
    w = s.guidance if guidance is None else guidance
    low = s.guidance_low if guidance_low == "config" else guidance_low
    interval = s.guidance_interval if interval == "config" else interval
    w = float(w) if low is None else weight_by_logsnr(grid, oscillating_guidance_weights(len(grid) - 1, w, low,
                                                                                          s.guidance_constant))
    return w if interval is None or w == 0 else guidance_interval(w, interval)


@torch.inference_mode()
def sample_videos(
    system: System,
    num: int,
    *,
    steps: Optional[int] = None,
    sampler: Optional[str] = None,
    eta: Optional[float] = None,
    spacing: Optional[str] = None,
    thresholding: Optional[str] = "config",
    seed: int = 0,
    frames: Optional[int] = None,
    size: Optional[int] = None,
    batch_size: int = 16,
    cond: Optional[Conditioning] = None,
    guidance: Optional[float] = None,
    guidance_low: Optional[float] | str = "config",
    guidance_interval: Optional[Interval] | str = "config",
    precision: str = "auto",
    progress: bool = True,
    on_step: Optional[Callable[[int, int, float, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Draw ``num`` videos ``[num, C, F, H, W]`` in [-1, 1] (float32, on CPU), decoded by the space.

    Sampler settings default to ``cfg.sample``. Sampling runs in batches of ``batch_size`` under
    ``torch.inference_mode`` and bf16 autocast on CUDA. Reproducible given ``seed``.

    ``cond`` (``[num, ...]`` fields, e.g. from :func:`make_conditioning`) conditions the samples. When
    it holds text or class labels, classifier-free guidance applies with the weight of
    :func:`guidance_weight` (``guidance`` / ``guidance_low`` / ``guidance_interval``, defaults from
    ``cfg.sample``): one batched forward of 2B per step against the same conditioning with text and
    labels dropped. Weight 0 is plain conditional sampling (one forward of B).

    ``on_step(first, step, logsnr, x_hat)`` (optional) is called after each sampler step of each batch:
    ``first`` is the index of the batch's first sample, ``logsnr`` the noise level the step evaluated the
    model at, ``x_hat [b, ...]`` its clean estimate in the model's space (pixels for pixel-space systems,
    undecoded latents otherwise): for watching where along the noise levels a sample takes its form.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got num={num}, batch_size={batch_size}")
    if system.is_sr_stage and (cond is None or cond.lowres is None):
        raise ValueError("this checkpoint is a super-resolution stage: it samples from a low-resolution video "
                         "(kinema cascade BASE ... this, or kinema upsample this --input low.mp4)")
    run = SamplerSettings.from_system(system, steps=steps, sampler=sampler, eta=eta, spacing=spacing,
                                      thresholding=thresholding)
    device = system.device
    net = autocast_denoiser(system, precision)
    generator = torch.Generator(device).manual_seed(seed)
    shape = system.space.shape(frames, size)
    weight = guidance_weight(system.cfg, run.grid, guidance, guidance_low, guidance_interval)
    outputs = []
    bar = tqdm(total=run.steps * ((num + batch_size - 1) // batch_size), desc="sampling", disable=not progress,
               unit="step", leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = run.initial((b, *shape), generator, device)
        c = cond.map(lambda t: t[start:start + b].to(device)) if cond is not None else None
        denoise = apply_guidance(system, net, complete_context(system, c, z), weight)
        def step_done(i: int, total: int, z_i: torch.Tensor, x_hat: torch.Tensor, first: int = start) -> None:
            bar.update(1)
            if on_step is not None:
                on_step(first, i, float(run.grid[i]), x_hat)

        video = run(net.track(denoise), z, generator=generator, callback=step_done)
        require_finite(video, f"samples {start + 1}-{start + b} of {num}")  # NaN would be written as black
        outputs.append(system.space.decode(video).cpu())
    bar.close()
    return torch.cat(outputs)
