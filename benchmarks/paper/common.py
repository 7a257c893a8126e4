"""Shared pieces of the paper-ablation benchmarks: train a small VDM on moving digits, and score
videos by FVD against real clips of the same dataset with the real I3D weights
(`kinema assets fetch i3d` first, or --weights PATH)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kinema.config import load_config
from kinema.data.io import to_uint8
from kinema.data.synthetic import MovingDigits
from kinema.metrics.assets import resolve_weights
from kinema.metrics.features import extract_features, preprocess_i3d
from kinema.metrics.frechet import GaussianStats, frechet_from_stats
from kinema.metrics.i3d import load_i3d
from kinema.system import resolve_device
from kinema.train.loop import Trainer

SIZES = {  # smoke: minutes on 2 CPU cores; cpu: about an hour per pair of runs on 2 cores; full: one GPU
    "smoke": {"dim": 8, "mults": "[1,2]", "attn": "[1]", "size": 32, "steps": 40, "batch": 2, "num": 8, "ref": 16},
    "cpu": {"dim": 16, "mults": "[1,2,4]", "attn": "[1,2]", "size": 32, "steps": 600, "batch": 4, "num": 64,
            "ref": 128},
    "full": {"dim": 32, "mults": "[1,2,4]", "attn": "[1,2]", "size": 32, "steps": 3000, "batch": 16, "num": 128,
             "ref": 256},
}


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny CPU-sized run (numbers are not meaningful)")
    p.add_argument("--cpu", action="store_true", help="the largest size that is practical on a CPU (where the "
                   "benchmark has one)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: by size)")
    p.add_argument("--num", type=int, default=None, help="generated clips per FVD (default: by size)")
    p.add_argument("--weights", default=None, help="I3D safetensors (default: the cached asset)")
    p.add_argument("--out", default="runs/paper", help="run directories go below this")
    p.add_argument("--device", default="auto")
    return p


def size_of(args, sizes: Optional[dict] = None) -> dict:
    """The size table's entry for ``--smoke`` / ``--cpu`` / full (``sizes``: default this module's SIZES) with
    ``--steps`` / ``--num`` applied."""
    sizes = sizes or SIZES
    key = "smoke" if args.smoke else "cpu" if getattr(args, "cpu", False) else "full"
    if key not in sizes:
        raise SystemExit(f"this benchmark has no --{key} size (it has: {', '.join(sizes)})")
    s = dict(sizes[key])
    s["steps"] = args.steps or s["steps"]
    s["num"] = args.num or s["num"]
    return s


def real_clips(num: int, frames: int, size: int, seed: int) -> torch.Tensor:
    """``num`` moving-digits clips ``[num, 1, frames, size, size]`` in [-1, 1], drawn with ``seed`` (the
    training data uses seed 0, so any other seed gives clips the models never saw)."""
    data = MovingDigits(num_frames=frames, size=size, length=1_000_000, seed=seed)
    return torch.stack([data[i]["video"] for i in range(num)])


def train(args, name: str, frames: int = 16, **extra) -> tuple[object, object, float]:
    """Train a small VDM on ``frames``-frame moving digits; returns (EMA system, config, seconds)."""
    s = size_of(args)
    overrides = {
        "model.unet.in_channels": 1, "model.unet.dim": s["dim"], "model.unet.dim_mults": s["mults"],
        "model.unet.attn_levels": s["attn"], "model.unet.num_res_blocks": 1, "model.unet.head_dim": 8,
        "model.unet.norm_groups": 4, "data.dataset": "moving_digits", "data.num_frames": frames, "data.size": s["size"],
        "train.steps": s["steps"], "train.batch_size": s["batch"], "train.warmup_steps": min(100, s["steps"] // 4),
        "train.ckpt_every": s["steps"], "train.sample_every": 0, "train.log_every": 50, "train.tensorboard": False,
        "train.device": args.device, "train.lr": 5e-4, "train.out_dir": str(Path(args.out) / name), **extra,
    }
    cfg = load_config("demo", [f"{k}={v}" for k, v in overrides.items()])
    start = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.fit()
    return trainer.ema_system(), cfg, time.perf_counter() - start


class FVDScorer:
    """FVD of generated videos against ``ref`` real moving-digits clips of ``frames`` frames of
    ``size`` (default: by size) pixels, unseen in training (statistics computed once)."""

    def __init__(self, args, frames: int = 16, size: Optional[int] = None) -> None:
        s = size_of(args)
        self.device = resolve_device(args.device)
        self.net = load_i3d(resolve_weights("i3d", args.weights), self.device)
        clips = to_uint8(real_clips(s["ref"], frames, size or s["size"], seed=12345))
        self.ref = GaussianStats.from_features(self.features(clips, "reference"))

    def features(self, clips: np.ndarray, desc: str) -> np.ndarray:
        return extract_features(self.net, clips, preprocess_i3d, batch_size=8, total=len(clips), desc=desc)

    def __call__(self, videos: torch.Tensor) -> float:
        """``videos`` float ``[N, C, F, H, W]`` in [-1, 1]."""
        gen = GaussianStats.from_features(self.features(to_uint8(videos), "generated"))
        return frechet_from_stats(gen, self.ref)
