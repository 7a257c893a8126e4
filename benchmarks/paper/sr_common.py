"""Shared pieces of the super-resolution benchmarks (Imagen Video): train a small spatial SR stage on
bouncing shapes (colour, so a colour shift is visible), degrade unseen real clips into its inputs, and
measure what the stage makes of them."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import common

from kinema.config import load_config
from kinema.data.synthetic import BouncingShapes
from kinema.diffusion.superres import degrade
from kinema.pipelines.sample import lowres_conditioning, sample_videos
from kinema.resize import resize_video
from kinema.train.loop import Trainer

SIZES = {  # smoke: minutes on 2 shared CPU cores; full: minutes on one GPU
    "smoke": {"dim": 16, "frames": 8, "size": 16, "steps": 500, "batch": 4, "num": 8, "sample_steps": 32},
    "full": {"dim": 32, "frames": 16, "size": 64, "steps": 5000, "batch": 16, "num": 64, "sample_steps": 64},
}


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized run")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: by size)")
    p.add_argument("--num", type=int, default=None, help="clips to upsample (default: by size)")
    p.add_argument("--out", default="runs/paper", help="run directories go below this")
    p.add_argument("--device", default="auto")
    return p


def size_of(args) -> dict:
    return common.size_of(args, SIZES)


def train_ssr(args, name: str, parameterization: str = "v", aug_max: float = 0.0):
    """A x2 spatial SR stage (fully convolutional U-Net) on bouncing shapes; the loss weighting is the
    parameterization's own (plain eps- or v-MSE). Returns (EMA system, seconds)."""
    s = size_of(args)
    overrides = {
        "model.unet.in_channels": 3, "model.unet.extra_in_channels": 3, "model.unet.dim": s["dim"],
        "model.unet.dim_mults": "[1,2,2]", "model.unet.num_res_blocks": 1, "model.unet.attn_levels": "[]",
        "model.unet.temporal_mixing": "[conv,conv,conv]", "model.unet.middle_attention": False,
        "model.unet.norm_groups": 4, "model.unet.scalar_conditions": "[lowres_logsnr]",
        "diffusion.parameterization": parameterization, "diffusion.weighting": parameterization,
        "data.dataset": "bouncing_shapes", "data.num_frames": s["frames"], "data.size": s["size"],
        "sr.spatial_factor": 2, "sr.aug_max": aug_max, "train.steps": s["steps"], "train.batch_size": s["batch"],
        "train.lr": 2e-3, "train.lr_schedule": "constant", "train.warmup_steps": min(50, s["steps"] // 4),
        "train.ema_decay": 0.99,
        "train.ckpt_every": s["steps"], "train.sample_every": 0, "train.log_every": 50, "train.tensorboard": False,
        "train.progress": False, "train.device": args.device, "train.out_dir": str(Path(args.out) / name),
    }
    cfg = load_config("demo", [f"{k}={v}" for k, v in overrides.items()])
    start = time.perf_counter()
    trainer = Trainer(cfg, overwrite=True)
    trainer.fit()
    return trainer.ema_system(), time.perf_counter() - start


def real_pairs(args, seed: int = 12345) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-resolution clips ``[N, 3, F, S, S]``, their x2 degraded inputs), unseen in training."""
    s = size_of(args)
    data = BouncingShapes(num_frames=s["frames"], size=s["size"], length=1_000_000, seed=seed)
    high = torch.stack([data[i]["video"] for i in range(s["num"])])
    return high, degrade(high, 2)


def upsample(system, lowres: torch.Tensor, level: float, steps: int, seed: int = 0) -> torch.Tensor:
    """The SR stage's output for ``lowres`` at the fixed augmentation level ``level`` (DDPM sampler)."""
    generator = torch.Generator(system.device).manual_seed(seed + 1)
    cond = lowres_conditioning(system, lowres.to(system.device), level=level, generator=generator)
    return sample_videos(system, lowres.shape[0], steps=steps, sampler="ddpm", seed=seed, cond=cond, progress=False)


def colour_shift(output: torch.Tensor, lowres: torch.Tensor) -> dict:
    """Colour shift of an SR output against its conditioning input (Imagen Video section 2.4 reports that
    eps-prediction SR models shift colours and v-prediction does not): d[f, c] = mean over clips and
    pixels of ``output - upsampled lowres`` for frame f and channel c (``[N, C, F, H, W]`` in [-1, 1]).
    Returns the mean |d| (shift), the largest |d| over frames and channels, the drift over the clip
    (mean over channels of |d[last frame] - d[first frame]|) and d per frame (mean over channels)."""
    up = resize_video(lowres, tuple(output.shape[-2:]), antialias=False)
    d = (output - up).mean(dim=(0, 3, 4)).T  # [F, C]
    return {"shift": d.abs().mean().item(), "max_shift": d.abs().max().item(),
            "drift": (d[-1] - d[0]).abs().mean().item(),
            "per_frame": [round(v, 4) for v in d.mean(dim=1).tolist()]}


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB on the [0, 1] scale of videos in [-1, 1]."""
    mse = ((output - target) / 2).pow(2).mean().item()
    return 10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))).item()
