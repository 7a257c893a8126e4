"""Spatial super-resolution with an unconditional high-resolution model (VDM, Ho et al. 2022,
section 3.1, eq. 8): sample a high-resolution video whose downsampled version matches a given
low-resolution video, by reconstruction guidance through a (differentiable, antialiased bilinear)
downsampling operator."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from kinema.config import KinemaConfig
from kinema.diffusion.guidance import reconstruction_guidance, spatial_downsampling
from kinema.pipelines.extend import as_batch
from kinema.pipelines.sample import SamplerSettings, autocast_denoiser, complete_context

DEFAULT_GUIDANCE = 10.0


def upsample_video(model: nn.Module, cfg: KinemaConfig, lowres: Tensor, *, size: Optional[int] = None,
                   guidance: float = DEFAULT_GUIDANCE, steps: Optional[int] = None, sampler: Optional[str] = None,
                   eta: Optional[float] = None, seed: int = 0, precision: str = "auto",
                   progress: bool = True) -> Tensor:
    """``lowres [B, C, F, h, w]`` (or ``[C, F, h, w]``) in [-1, 1] -> float32 ``[B, C, F, size, size]`` on
    CPU, ``size`` defaulting to the model's ``data.size``; ``guidance`` is w_r. All F frames are
    sampled as one window (use the model's training length, or a length it generalizes to)."""
    lowres = as_batch(lowres, cfg, "low-resolution video")
    size = size or cfg.data.size
    if min(lowres.shape[-2:]) > size:
        raise ValueError(f"the input ({lowres.shape[-2]}x{lowres.shape[-1]}) is larger than the target size {size}")
    run = SamplerSettings.from_config(cfg, steps=steps, sampler=sampler, eta=eta)
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    y = lowres.to(device, torch.float32)
    b, c, f = y.shape[:3]
    z = torch.randn((b, c, f, size, size), generator=generator, device=device)
    cond = complete_context(cfg, None, z)
    net = autocast_denoiser(model, cfg, precision)

    def denoise(z_, logsnr):
        return net(z_, logsnr, cond)

    guided = reconstruction_guidance(denoise, y, spatial_downsampling(tuple(y.shape[-2:])), guidance)
    with tqdm(total=run.steps, desc="upsample", unit="step", disable=not progress) as bar, torch.no_grad():
        video = run(guided, z, generator=generator, callback=lambda *a: bar.update(1))
    return video.float().clamp(-1, 1).cpu()
