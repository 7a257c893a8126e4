"""Spatial super-resolution with an unconditional high-resolution model (VDM, Ho et al. 2022,
section 3.1, eq. 8): sample a high-resolution video whose downsampled version matches a given
low-resolution video, by reconstruction guidance through a (differentiable, antialiased bilinear)
downsampling operator. A text- or class-conditional model samples under its conditioning, with
classifier-free weight ``guidance`` kept apart from the reconstruction weight ``recon_weight``.
A super-resolution stage of a cascade (``sr``, Imagen Video) is conditioned on the input instead:
no reconstruction guidance, the input must have the stage's low-resolution shape."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kinema.conditioning import Conditioning
from kinema.diffusion.guidance import reconstruction_guidance, spatial_downsampling
from kinema.pipelines.extend import as_batch
from kinema.pipelines.sample import (SamplerSettings, apply_guidance, autocast_denoiser, complete_context,
                                     lowres_conditioning, sample_videos)
from kinema.system import System

DEFAULT_RECON_WEIGHT = 10.0  # w_r of reconstruction guidance for upsampling (tuned on the exact-Gaussian test)


def upsample_video(system: System, lowres: Tensor, *, size: Optional[int] = None,
                   recon_weight: float = DEFAULT_RECON_WEIGHT, guidance: Optional[float] = None,
                   cond: Optional[Conditioning] = None, steps: Optional[int] = None, sampler: Optional[str] = None,
                   eta: Optional[float] = None, seed: int = 0, precision: str = "auto",
                   progress: bool = True) -> Tensor:
    """``lowres [B, C, F, h, w]`` (or ``[C, F, h, w]``) in [-1, 1] -> float32 ``[B, C, F, size, size]`` on
    CPU, ``size`` defaulting to the model's training size; ``recon_weight`` is w_r, ``guidance`` the
    classifier-free weight over ``cond`` (default ``sample.guidance``). All F frames are sampled as
    one window (use the model's training length, or a length it generalizes to)."""
    lowres = as_batch(lowres, system, "low-resolution video")
    if system.is_sr_stage:  # a trained SR stage conditions on the input instead of guiding towards it
        if size is not None and size != system.cfg.data.size:
            raise ValueError(f"this SR stage makes {system.cfg.data.size}x{system.cfg.data.size} videos, not --size {size}")
        generator = torch.Generator(system.device).manual_seed(seed + 1)
        c = lowres_conditioning(system, lowres.to(system.device, torch.float32), cond, generator=generator,
                                what="the input video")
        return sample_videos(system, lowres.shape[0], steps=steps, sampler=sampler, eta=eta, seed=seed, cond=c,
                             guidance=guidance, precision=precision, progress=progress)
    size = system.space.size if size is None else size
    if min(lowres.shape[-2:]) > size:
        raise ValueError(f"the input ({lowres.shape[-2]}x{lowres.shape[-1]}) is larger than the target size {size}")
    guidance = system.cfg.sample.guidance if guidance is None else guidance
    run = SamplerSettings.from_system(system, steps=steps, sampler=sampler, eta=eta)
    device = system.device
    generator = torch.Generator(device).manual_seed(seed)
    y = lowres.to(device, torch.float32)
    z = run.initial((y.shape[0], *system.space.shape(y.shape[2], size)), generator, device)
    c = complete_context(system, cond.to(device) if cond is not None else None, z)
    net = autocast_denoiser(system, precision)
    guided = reconstruction_guidance(apply_guidance(system, net, c, guidance), y,
                                     spatial_downsampling(tuple(y.shape[-2:])), recon_weight)
    with tqdm(total=run.steps, desc="upsample", unit="step", disable=not progress) as bar, torch.no_grad():
        video = run(net.track(guided), z, generator=generator, callback=lambda *a: bar.update(1))
    return system.space.decode(video).cpu()
