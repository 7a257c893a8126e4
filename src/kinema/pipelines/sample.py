"""Unconditional / conditional video sampling from a trained backbone."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from kinema.conditioning import Conditioning
from kinema.config import KinemaConfig
from kinema.diffusion.objective import Denoiser
from kinema.diffusion.samplers import get_sampler
from kinema.diffusion.schedule import sampling_grid
from kinema.pipelines.build import autocast, autocast_dtype, build_schedule


def video_shape(cfg: KinemaConfig, frames: Optional[int] = None, size: Optional[int] = None) -> tuple[int, int, int, int]:
    """(C, F, H, W) of the videos a config's model was trained on, optionally overridden."""
    c = cfg.model.unet.in_channels
    f = frames or cfg.data.num_frames
    s = size or cfg.data.size
    return c, f, s, s


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
    precision: str = "auto",
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``num`` videos ``[num, C, F, H, W]`` in [-1, 1] (float32, on CPU).

    Sampler settings default to ``cfg.sample``. Sampling runs in batches of ``batch_size`` under
    ``torch.inference_mode`` and bf16 autocast on CUDA. Reproducible given ``seed``.
    """
    s = cfg.sample
    steps = steps or s.steps
    sampler_fn = get_sampler(sampler or s.sampler)
    eta = s.eta if eta is None else eta
    thresholding = s.thresholding if thresholding == "config" else thresholding
    device = next(model.parameters()).device
    amp = autocast_dtype(precision, device)
    denoiser = Denoiser(model, cfg.diffusion.parameterization)
    grid = sampling_grid(build_schedule(cfg), steps, spacing or s.spacing)
    generator = torch.Generator(device).manual_seed(seed)
    shape = video_shape(cfg, frames, size)
    extra = {"eta": eta} if (sampler or s.sampler) == "ddim" else {}
    outputs = []
    bar = tqdm(total=steps * ((num + batch_size - 1) // batch_size), desc="sampling", disable=not progress,
               unit="step", leave=False)
    for start in range(0, num, batch_size):
        b = min(batch_size, num - start)
        z = torch.randn((b, *shape), generator=generator, device=device)
        c = cond.map(lambda t: t[start:start + b].to(device)) if cond is not None else None

        def denoise(z_, logsnr):
            with autocast(device, amp):
                return denoiser(z_, logsnr, c)

        video = sampler_fn(denoise, z, grid, generator=generator, thresholding=thresholding,
                           callback=lambda *a: bar.update(1), **extra)
        outputs.append(video.float().clamp(-1, 1).cpu())
    bar.close()
    return torch.cat(outputs)
