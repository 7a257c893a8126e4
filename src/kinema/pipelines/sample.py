"""Unconditional / conditional video sampling from a trained backbone, with classifier-free guidance
over text and class labels (constant weight, or Imagen Video's oscillating guidance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from kinema.conditioning import LABEL_FIELDS, Conditioning, drop_conditioning, with_context
from kinema.config import KinemaConfig
from kinema.diffusion.guidance import Weight, guided_denoiser, oscillating_guidance_weights, weight_by_logsnr
from kinema.diffusion.objective import Denoiser
from kinema.diffusion.samplers import get_sampler
from kinema.diffusion.schedule import sampling_grid
from kinema.models.text import TextConditioned
from kinema.pipelines.build import autocast, autocast_dtype, build_schedule
from kinema.validate import require_finite


def video_shape(cfg: KinemaConfig, frames: Optional[int] = None, size: Optional[int] = None) -> tuple[int, int, int, int]:
    """(C, F, H, W) of the videos a config's model was trained on, optionally overridden."""
    c = cfg.model.unet.in_channels
    f = frames or cfg.data.num_frames
    s = size or cfg.data.size
    return c, f, s, s


@dataclass
class SamplerSettings:
    """A sampler with its time grid and options, resolved from ``cfg.sample`` and explicit overrides."""

    fn: Callable[..., torch.Tensor]
    grid: torch.Tensor  # log-SNR grid, float64 [steps + 1]
    steps: int
    thresholding: Optional[str]
    extra: dict

    @classmethod
    def from_config(cls, cfg: KinemaConfig, *, steps: Optional[int] = None, sampler: Optional[str] = None,
                    eta: Optional[float] = None, spacing: Optional[str] = None,
                    thresholding: Optional[str] = "config") -> "SamplerSettings":
        s = cfg.sample
        steps = steps or s.steps
        name = sampler or s.sampler
        eta = s.eta if eta is None else eta
        return cls(get_sampler(name), sampling_grid(build_schedule(cfg), steps, spacing or s.spacing), steps,
                   s.thresholding if thresholding == "config" else thresholding,
                   {"eta": eta} if name == "ddim" else {})

    def __call__(self, denoise, z: torch.Tensor, *, generator=None, callback=None) -> torch.Tensor:
        return self.fn(denoise, z, self.grid, generator=generator, thresholding=self.thresholding,
                       callback=callback, **self.extra)


def is_context_model(cfg: KinemaConfig) -> bool:
    """Whether the config's model was trained with context frames (``train.context.max_frames > 0``)."""
    return cfg.train.context.max_frames > 0


def complete_context(cfg: KinemaConfig, cond: Optional[Conditioning], z: torch.Tensor) -> Optional[Conditioning]:
    """A context model always takes context channels: give it the null context (no known frame)
    when ``cond`` sets none. ``z [B, C, F, H, W]``. Other models: ``cond`` unchanged."""
    if not is_context_model(cfg) or (cond is not None and cond.context is not None):
        return cond
    return with_context(cond, torch.zeros_like(z), torch.zeros(z.shape[0], z.shape[2], dtype=torch.bool,
                                                                  device=z.device))


def autocast_denoiser(model: nn.Module, cfg: KinemaConfig, precision: str = "auto"):
    """``net(z, logsnr, cond) -> Prediction``: ``model`` wrapped by :class:`Denoiser` in the config's
    parameterization, each call under bf16 autocast on CUDA (``precision``, see ``autocast_dtype``).
    The one place sampling pipelines turn a backbone into a denoiser."""
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    denoiser = Denoiser(model, cfg.diffusion.parameterization)

    def net(z: torch.Tensor, logsnr: torch.Tensor, cond: Optional[Conditioning]):
        with autocast(device, amp):
            return denoiser(z, logsnr, cond)

    return net


def _cycle(values: Sequence, num: int) -> list:
    return [values[i % len(values)] for i in range(num)]


@torch.no_grad()
def make_conditioning(model: nn.Module, num: int, *, prompts: Optional[Sequence[str]] = None,
                      class_labels: Optional[Sequence[int]] = None) -> Optional[Conditioning]:
    """Conditioning for ``num`` samples: prompts and / or class labels, each list cycled over the
    samples (sample i gets ``prompts[i % len(prompts)]``). Text embeddings come from the model's own
    text encoder (:class:`~kinema.models.text.TextConditioned`). None when neither is given."""
    if not prompts and not class_labels:
        return None
    device = next(model.parameters()).device
    cond = Conditioning()
    if prompts:
        if not isinstance(model, TextConditioned):
            raise ValueError("this model is not text-conditional (model.text.encoder=none); --prompt needs a model "
                             "trained with a text encoder")
        cond.text_emb, cond.text_mask = model.encode_text(_cycle(list(prompts), num))
    if class_labels:
        classes = model.cfg.num_classes
        bad = [k for k in class_labels if not 0 <= int(k) < classes]
        if classes < 1 or bad:
            raise ValueError(f"class label {bad[0] if bad else class_labels[0]} is not valid for this model "
                             f"(model.unet.num_classes={classes})")
        cond.class_labels = torch.tensor(_cycle([int(k) for k in class_labels], num), dtype=torch.long, device=device)
    return cond


def guidance_weight(cfg: KinemaConfig, grid: torch.Tensor, guidance: Optional[float] = None,
                    guidance_low: Optional[float] | str = "config") -> Weight:
    """The guidance weight to sample with: ``guidance`` (default ``cfg.sample.guidance``), or with
    ``guidance_low`` set (default ``cfg.sample.guidance_low``) Imagen Video's oscillating weights
    over the steps of ``grid`` as a function of the noise level."""
    s = cfg.sample
    w = s.guidance if guidance is None else guidance
    low = s.guidance_low if guidance_low == "config" else guidance_low
    if low is None:
        return float(w)
    return weight_by_logsnr(grid, oscillating_guidance_weights(len(grid) - 1, w, low, s.guidance_constant))


@torch.inference_mode()
def sample_videos(
    model: nn.Module,
    cfg: KinemaConfig,
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
    precision: str = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``num`` videos ``[num, C, F, H, W]`` in [-1, 1] (float32, on CPU).

    Sampler settings default to ``cfg.sample``. Sampling runs in batches of ``batch_size`` under
    ``torch.inference_mode`` and bf16 autocast on CUDA. Reproducible given ``seed``.

    ``cond`` (``[num, ...]`` fields, e.g. from :func:`make_conditioning`) conditions the samples. When
    it holds text or class labels, classifier-free guidance applies with the weight of
    :func:`guidance_weight` (``guidance`` / ``guidance_low``, defaults from ``cfg.sample``): one
    batched forward of 2B per step against the same conditioning with text and labels dropped.
    Weight 0 is plain conditional sampling.
    """
    run = SamplerSettings.from_config(cfg, steps=steps, sampler=sampler, eta=eta, spacing=spacing,
                                      thresholding=thresholding)
    device = next(model.parameters()).device
    net = autocast_denoiser(model, cfg, precision)
    generator = torch.Generator(device).manual_seed(seed)
    shape = video_shape(cfg, frames, size)
    weight = guidance_weight(cfg, run.grid, guidance, guidance_low)
    labelled = cond is not None and (cond.text_emb is not None or cond.class_labels is not None)
    outputs = []
    bar = tqdm(total=run.steps * ((num + batch_size - 1) // batch_size), desc="sampling", disable=not progress,
               unit="step", leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn((b, *shape), generator=generator, device=device)
        c = cond.map(lambda t: t[start:start + b].to(device)) if cond is not None else None
        c = complete_context(cfg, c, z)
        if labelled:
            denoise = guided_denoiser(net, c, drop_conditioning(c, fields=LABEL_FIELDS), weight)
        else:
            denoise = lambda z_, logsnr: net(z_, logsnr, c)  # noqa: E731
        video = run(denoise, z, generator=generator, callback=lambda *a: bar.update(1))
        require_finite(video, f"samples {start + 1}-{start + b} of {num}")  # NaN would be written as black
        outputs.append(video.float().clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(outputs)
