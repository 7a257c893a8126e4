"""Long videos: autoregressive temporal extension (VDM, Ho et al. 2022, sections 3.1 and 4.3).

A model trained on windows of W frames makes a video of any length N: each new window keeps the
last K generated frames (the overlap) as known frames x^a and samples the W - K frames after them,
x^b, conditioned on x^a by one of three methods:

- ``reconstruction``: reconstruction guidance (VDM eq. 7) on an unconditional model, with the known
  part of z drawn from q(z_t | x^a) as VDM does;
- ``replacement``: the replacement method alone (VDM section 3.1);
- ``context``: a context-conditioned (prediction) model that gets x^a through
  ``Conditioning.context`` (``train.context``), optionally with classifier-free guidance over the
  context (weight w, the null being no known frame).

Only one window of W frames is ever on the device: memory is independent of N. The output keeps the
input frames unchanged and appends the generated ones, exactly N frames in all.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kinema.conditioning import Conditioning, drop_conditioning, with_context
from kinema.config import KinemaConfig
from kinema.diffusion.guidance import (frame_selection, guided_denoiser, reconstruction_guidance, replacement,
                                       resize_frames)
from kinema.pipelines.sample import SamplerSettings, autocast_denoiser, complete_context, is_context_model

METHODS = ("reconstruction", "replacement", "context")
DEFAULT_GUIDANCE = {"reconstruction": 5.0, "replacement": 0.0, "context": 0.0}


def read_clip(path: str | Path, channels: int, size: Optional[int] = None, max_frames: Optional[int] = None) -> Tensor:
    """A video file as ``[1, C, F, H, W]`` in [-1, 1] with ``channels`` (1: grayscale, the mean of RGB;
    3: RGB), resized to ``size x size`` (antialiased bilinear) when ``size`` is given and differs."""
    from kinema.data.io import from_uint8, read_video

    video = from_uint8(read_video(path, max_frames=max_frames))[None]  # [1, 3, F, H, W]
    if channels == 1:
        video = video.mean(dim=1, keepdim=True)
    elif channels != 3:
        raise ValueError(f"cannot read a video for a model with {channels} channels (1 or 3 supported)")
    if size is not None and tuple(video.shape[-2:]) != (size, size):
        video = resize_frames(video, (size, size)).clamp(-1, 1)
    return video


def as_batch(video: Tensor, cfg: KinemaConfig, what: str = "video") -> Tensor:
    """``[C, F, H, W]`` or ``[B, C, F, H, W]`` -> ``[B, C, F, H, W]``, checked against the model's channels."""
    if video.ndim == 4:
        video = video[None]
    if video.ndim != 5 or video.shape[1] != cfg.model.unet.in_channels:
        raise ValueError(f"expected a {what} [B, {cfg.model.unet.in_channels}, F, H, W] for this model, got shape "
                         f"{tuple(video.shape)}")
    return video


def window_plan(have: int, total: int, window: int, overlap: int) -> list[int]:
    """How many new frames each window makes, going from ``have`` frames to ``total`` with windows of
    ``window`` frames whose first ``overlap`` frames are known: ``ceil((total - have) / (window -
    overlap))`` windows of ``window - overlap`` new frames (the last one may be shorter)."""
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be in [1, window - 1] = [1, {window - 1}], got {overlap}")
    if have < overlap:
        raise ValueError(f"the input has {have} frames, fewer than the overlap of {overlap}")
    if total <= have:
        raise ValueError(f"the target length ({total} frames) must exceed the input's {have} frames")
    step = window - overlap
    return [min(step, total - have - i * step) for i in range(math.ceil((total - have) / step))]


def conditional_denoiser(model: nn.Module, cfg: KinemaConfig, method: str, x_a: Tensor, known: Tensor,
                         guidance: float, *, generator: Optional[torch.Generator] = None,
                         precision: str = "auto", cond: Optional[Conditioning] = None):
    """A sampler-ready ``denoise(z, logsnr)`` for sampling the frames of ``x_a [B, C, F, H, W]`` where
    ``known [B, F]`` is False, given those where it is True, by ``method`` (see the module
    docstring); ``guidance`` is w_r for reconstruction and the classifier-free weight for context.
    Every method also overwrites the known part of z (replacement), so the sample keeps x^a there."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    with_amp = autocast_denoiser(model, cfg, precision)
    if method == "context":
        if not is_context_model(cfg):
            raise ValueError("method 'context' needs a model trained with context frames (train.context.max_frames "
                             "> 0, e.g. the vdm_moving_digits_context preset); use reconstruction or replacement")
        most = int(known.sum(1).max())
        if most > cfg.train.context.max_frames:
            raise ValueError(f"{most} known frames, but the model was trained with at most "
                             f"train.context.max_frames={cfg.train.context.max_frames}; lower the overlap")
        c = with_context(cond, x_a, known)
        denoise = guided_denoiser(with_amp, c, drop_conditioning(c, fields=("context",)), guidance)
    else:
        c = complete_context(cfg, cond, x_a)
        denoise = lambda z, logsnr: with_amp(z, logsnr, c)  # noqa: E731
        if method == "reconstruction" and guidance != 0:
            view = known[:, None, :, None, None].to(x_a.dtype)
            denoise = reconstruction_guidance(denoise, x_a * view, frame_selection(known), guidance, correct=~known)
    return replacement(denoise, x_a, known, generator=generator)


def extend_video(model: nn.Module, cfg: KinemaConfig, video: Tensor, frames: int, *, method: str = "reconstruction",
                 overlap: Optional[int] = None, window: Optional[int] = None, guidance: Optional[float] = None,
                 steps: Optional[int] = None, sampler: Optional[str] = None, eta: Optional[float] = None,
                 seed: int = 0, precision: str = "auto", progress: bool = True) -> Tensor:
    """Extend ``video [B, C, F0, H, W]`` (or ``[C, F0, H, W]``) in [-1, 1] to exactly ``frames`` frames.

    ``window`` frames per model call (default: ``data.num_frames``, the training length), the last
    ``overlap`` of them known (default: half the window); a shorter last window is sampled at full
    length and cut. Returns float32 ``[B, C, frames, H, W]`` on
    CPU whose first F0 frames are the input. Reproducible given ``seed``.
    """
    video = as_batch(video, cfg, "video")
    window = window or cfg.data.num_frames
    overlap = overlap or window // 2
    plan = window_plan(video.shape[2], frames, window, overlap)
    guidance = DEFAULT_GUIDANCE[method] if guidance is None else guidance
    run = SamplerSettings.from_config(cfg, steps=steps, sampler=sampler, eta=eta)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    out = [video.float().cpu()]
    tail = video[:, :, -overlap:].to(device, torch.float32)  # the known frames of the next window
    bar = tqdm(total=len(plan) * run.steps, desc=f"extend ({len(plan)} windows)", unit="step", disable=not progress)
    with torch.no_grad() if method == "reconstruction" else torch.inference_mode():
        for new in plan:  # every window has the full length (a shorter last one is cut afterwards)
            b, c, _, h, w = tail.shape
            x_a = torch.cat([tail, tail.new_zeros(b, c, window - overlap, h, w)], dim=2)  # [B, C, W, H, W]
            known = torch.zeros(b, window, dtype=torch.bool, device=device)
            known[:, :overlap] = True
            denoise = conditional_denoiser(model, cfg, method, x_a, known, guidance, generator=generator,
                                           precision=precision)
            z = torch.randn(x_a.shape, generator=generator, device=device)
            sample = run(denoise, z, generator=generator, callback=lambda *a: bar.update(1)).float().clamp(-1, 1)
            sample = sample[:, :, :overlap + new]  # [known tail, new frames]; the known part is kept exactly
            out.append(sample[:, :, overlap:].cpu())
            tail = sample[:, :, -overlap:]
    bar.close()
    return torch.cat(out, dim=2)
