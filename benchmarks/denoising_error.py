"""Where a trained model's denoising error sits along the noise levels; prints one JSON line per checkpoint.

For each run (its newest checkpoint, EMA weights) it takes the first ``--num`` clips of the run's own dataset
(with their captions or classes when the model reads them), noises them with one fixed draw at each log-SNR of
``--logsnr``, and reports the mean squared error of the model's clean-clip estimate x_hat, per level. Two runs of the
same preset compare level by level: the high-noise end (negative log-SNR) is where an object's place, colour and path
are decided, the low-noise end where its outline and texture are drawn.

    python benchmarks/denoising_error.py runs/adamw runs/muon
    python benchmarks/denoising_error.py kinema-demo --num 64 --logsnr -8 -4 0 4 8

Fields: checkpoint, step, num, x_mse (log-SNR -> MSE in [-1, 1] pixel units, or latent units for a latent model).
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.data import default_collate

from kinema.checkpoint import load_meta
from kinema.data.factory import build_dataset
from kinema.diffusion.objective import Denoiser, coefficients
from kinema.system import load_system
from kinema.train.loop import batch_to_inputs


@torch.no_grad()
def denoising_error(run: str, num: int, levels: list[float], seed: int = 0, device: str = "auto") -> dict:
    system, ckpt = load_system(run, ema=True, device=device)
    cfg = system.cfg
    if system.is_sr_stage:
        raise SystemExit(f"{ckpt} is a super-resolution stage; this benchmark takes base models")
    data = build_dataset(cfg.data)
    if num > len(data):
        raise SystemExit(f"--num {num} is more than the {len(data)} clips of {ckpt}'s dataset")
    batch = default_collate([data[i] for i in range(num)])
    encode = system.encode_text if system.spec.text_dim else None
    x, cond = batch_to_inputs(batch, system.device, encode_text=encode, class_key=cfg.data.class_key)
    x = system.space.encode(x, cond.frame_segments)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x)
    denoise = Denoiser(system.model, cfg.diffusion.parameterization)
    errors = {}
    for level in levels:
        logsnr = torch.full((num,), float(level), dtype=torch.float64, device=x.device)
        alpha, sigma = coefficients(logsnr, x)
        x_hat = denoise(alpha * x + sigma * noise, logsnr, cond).x
        errors[f"{level:g}"] = round(float((x_hat.float() - x.float()).pow(2).mean()), 6)
    return {"checkpoint": str(ckpt), "step": load_meta(ckpt).get("step"),
            "num": num, "x_mse": errors}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories or checkpoints")
    p.add_argument("--num", type=int, default=32, help="dataset clips (default 32)")
    p.add_argument("--logsnr", type=float, nargs="+", default=[-8, -6, -4, -2, 0, 2, 4, 6, 8])
    p.add_argument("--seed", type=int, default=0, help="seed of the one noise draw shared by all levels and runs")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")
    for run in args.runs:
        print(json.dumps(denoising_error(run, args.num, args.logsnr, args.seed, args.device)), flush=True)


if __name__ == "__main__":
    main()
