"""Long videos from Video LDM's prediction and interpolation models on bouncing shapes. Prints JSON lines.

Prediction (Blattmann et al. 2023, section 3.1.2): the first ``--have`` frames of unseen real clips are
extended to ``--frames`` frames by a ``train.context.max_frames`` checkpoint, window by window with
``--overlap`` known frames, by the model's own context conditioning (``context``, with classifier-free
guidance weight ``--guidance`` over the context) and, for comparison, by reconstruction guidance on the
same model with no context (``reconstruction``, VDM eq. 7). Scored with the bouncing-shapes consistency
metric (:mod:`kinema.metrics.consistency`: one object, same colour and shape in every frame, bounded
motion; speeds counted per training clip).

Interpolation (section 3.2): every k-th frame of unseen real clips of ``1 + k (T - 1)`` frames is given
to a ``train.context.key_every = k`` checkpoint; the generated frames between are compared with the real
ones (PSNR on [-1, 1] -> [0, 1]) and with two baselines that need no model: the nearest key frame
repeated, and the linear blend of the two key frames around each frame.

    python benchmarks/video_ldm_long.py --predict runs/video_ldm_predict_shapes \
        --interp runs/video_ldm_interp_shapes --num 16 --steps 32 --out /tmp/long
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kinema.data.io import write_video
from kinema.metrics.consistency import consistency, reference_clips
from kinema.pipelines.extend import extend_video
from kinema.pipelines.interpolate import interpolate_video
from kinema.system import load_system


def score(videos: torch.Tensor, train_frames: int) -> dict:
    out = consistency(videos, train_frames=train_frames)
    out.pop("per_sample")
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (mapped to [0, 1]), over all their values."""
    mse = ((a - b) / 2).pow(2).mean().clamp_min(1e-12)
    return round(float(-10 * torch.log10(mse)), 2)


def baselines(real: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The frames between key frames filled without a model: nearest key frame, linear blend."""
    keys = real[:, :, ::k]
    f = real.shape[2]
    pos = torch.arange(f, dtype=torch.float64) / k
    lo = pos.floor().long().clamp_max(keys.shape[2] - 1)
    hi = (lo + 1).clamp_max(keys.shape[2] - 1)
    frac = (pos - lo).float()[None, None, :, None, None]
    nearest = keys[:, :, torch.where(frac[0, 0, :, 0, 0] < 0.5, lo, hi)]
    blend = keys[:, :, lo] * (1 - frac) + keys[:, :, hi] * frac
    return {"nearest_key_frame": nearest, "linear_blend": blend}


def predict(args) -> None:
    system, ckpt = load_system(args.predict, device="cpu")
    train_frames = system.cfg.data.num_frames
    real = reference_clips(args.num, args.have, system.cfg.data.size)
    for method in args.methods:
        start = time.time()
        videos = torch.cat([extend_video(system, real[i:i + args.batch], args.frames, method=method,
                                         overlap=args.overlap, guidance=args.guidance if method == "context" else 0.0,
                                         steps=args.steps, seed=args.seed + i, progress=False)
                            for i in range(0, args.num, args.batch)])
        row = {"task": "extend", "method": method, "ckpt": str(ckpt), "have": args.have, "frames": args.frames,
               "overlap": args.overlap, "guidance": args.guidance if method == "context" else 0.0, "steps": args.steps,
               **score(videos, train_frames), "seconds": round(time.time() - start, 1)}
        if args.out is not None:
            row["png"] = str(write_video(args.out / f"extend_{method}.png", videos[:8]))
        print(json.dumps(row), flush=True)
    print(json.dumps({"task": "extend", "method": "real_clips", "frames": args.frames,
                      **score(reference_clips(args.num, args.frames, system.cfg.data.size), train_frames)}))


def interpolate(args) -> None:
    system, ckpt = load_system(args.interp, device="cpu")
    k = system.cfg.train.context.key_every
    real = reference_clips(args.num, 1 + k * (args.keys - 1), system.cfg.data.size)
    between = torch.arange(real.shape[2]) % k != 0
    start = time.time()
    videos = torch.cat([interpolate_video(system, real[i:i + args.batch, :, ::k], guidance=args.guidance,
                                          steps=args.steps, seed=args.seed + i, progress=False)
                        for i in range(0, args.num, args.batch)])
    rows = {"model": videos, **baselines(real, k)}
    for name, v in rows.items():
        row = {"task": "interpolate", "fill": name, "keys": args.keys, "frames": real.shape[2], "k": k,
               "psnr_between": psnr(v[:, :, between], real[:, :, between]),
               **score(v, system.cfg.data.num_frames)}
        if name == "model":
            row.update(ckpt=str(ckpt), guidance=args.guidance, steps=args.steps, seconds=round(time.time() - start, 1))
            if args.out is not None:
                row["png"] = str(write_video(args.out / "interpolated.png", torch.cat([v[:4], real[:4]])))
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", default=None, help="a prediction model (train.context.max_frames > 0)")
    parser.add_argument("--interp", default=None, help="an interpolation model (train.context.key_every > 0)")
    parser.add_argument("--num", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--have", type=int, default=4, help="real frames given to the prediction model")
    parser.add_argument("--frames", type=int, default=24, help="length of the extended videos")
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--keys", type=int, default=5, help="key frames given to the interpolation model")
    parser.add_argument("--methods", nargs="+", choices=["context", "reconstruction"],
                        default=["context", "reconstruction"], help="extension methods to compare")
    parser.add_argument("--guidance", type=float, default=0.0, help="classifier-free weight over the context")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for PNG grids")
    args = parser.parse_args()
    if args.predict:
        predict(args)
    if args.interp:
        interpolate(args)


if __name__ == "__main__":
    main()
