"""Sample quality per minute of training: the quality-vs-time curve of a preset.

Trains a preset for a wall-clock budget in ``--points`` equal segments (each segment resumes the run;
a preset whose cosine ends with its budget, ``train.lr_decay_over=minutes`` as the demo's, is instead
trained afresh for each point's minutes, since a resumed segment would start a new decay), and after
each one samples ``--num`` videos from the EMA weights (seed 0, the preset's sampler) and
prints one JSON line: minutes of training so far, steps, FVD against unseen clips of the same data
(real I3D weights: `kinema assets fetch i3d`; clips shorter than 9 frames are repeated in time on both
sides, see kinema.metrics.consistency.repeat_frames) and, for bouncing shapes, the temporal-consistency
score (kinema.metrics.consistency). A text-conditional preset is sampled with `kinema demo`'s prompts
(cycled; kinema.cli.DEMO_PROMPTS) at the preset's guidance weight, as the demo samples. Beside each line it writes a PNG grid of the first 16 samples
(``point-K.png``, one row per video, one column per frame) so a reader can see what the numbers mean.

    python benchmarks/quality.py                                  # `kinema demo`, 7 minutes, 4 points (CPU)
    python benchmarks/quality.py --preset vdm_moving_digits --minutes 60 --points 6 --num 256 \\
        data.path=~/mnist                                         # moving digits on a GPU, real MNIST

Training time excludes sampling and scoring; it is the trainer's own clock, so a point's minutes are
what `kinema train ... train.minutes=M` would have trained. Numbers from a loaded machine are slower,
not different: compare curves measured on the same machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from kinema.config import load_config
from kinema.data.factory import build_dataset
from kinema.data.io import to_uint8, write_video
from kinema.metrics.assets import resolve_weights
from kinema.metrics.consistency import consistency, repeat_frames
from kinema.metrics.features import extract_features, preprocess_i3d
from kinema.metrics.frechet import GaussianStats, frechet_from_stats
from kinema.metrics.i3d import load_i3d
from kinema.cli import DEMO_PROMPTS, demo_processes, train_preset
from kinema.pipelines.sample import make_conditioning, sample_videos
from kinema.system import load_system, resolve_device
from kinema.train.distributed import spawn_local

REFERENCE_SEED = 12345  # the training data uses data.seed (0 by default): these clips are unseen


def reference_videos(cfg, num: int) -> torch.Tensor:
    """``num`` clips ``[num, C, F, H, W]`` of the preset's data drawn with another seed."""
    data = build_dataset(dataclasses.replace(cfg.data, seed=REFERENCE_SEED))
    return torch.stack([data[i]["video"] for i in range(num)])


class FVD:
    """FVD against fixed reference clips (I3D statistics of the reference computed once)."""

    def __init__(self, reference: torch.Tensor, weights, device) -> None:
        self.net = load_i3d(resolve_weights("i3d", weights), device)
        self.ref = self.stats(reference, "reference")

    def stats(self, clips: torch.Tensor, desc: str) -> GaussianStats:
        arr = to_uint8(repeat_frames(clips))
        return GaussianStats.from_features(extract_features(self.net, arr, preprocess_i3d, batch_size=8,
                                                            total=len(arr), desc=desc))

    def __call__(self, videos: torch.Tensor) -> float:
        return float(frechet_from_stats(self.stats(videos, "generated"), self.ref))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo_text", help="default demo_text: what `kinema demo` trains")
    p.add_argument("--minutes", type=float, default=7.0, help="total training budget (default 7: the demo's cap)")
    p.add_argument("--points", type=int, default=4, help="evaluation points, at equal fractions of the budget")
    p.add_argument("--num", type=int, default=64, help="sampled videos per point")
    p.add_argument("--reference", type=int, default=None, help="reference clips for FVD (default --num)")
    p.add_argument("--no-fvd", action="store_true", help="skip FVD (e.g. I3D weights not fetched)")
    p.add_argument("--weights", default=None, help="I3D safetensors (default: the cached asset)")
    p.add_argument("--out", default="runs/quality")
    p.add_argument("--device", default="auto")
    p.add_argument("--procs", default="auto",
                   help="data-parallel training processes on a CPU, as `kinema demo --procs` (default auto: 2 on 2+ cores)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the preset")
    args = p.parse_args()
    if args.points < 1 or args.minutes <= 0 or args.num < 1:
        p.error(f"--points, --minutes and --num must be positive, got {args.points}, {args.minutes}, {args.num}")

    out = Path(args.out)
    segment = args.minutes / args.points
    resumed = out / "run"  # the one run that each point resumes (presets whose cosine follows train.steps)
    overrides = [f"train.out_dir={resumed}", f"train.minutes={segment}", "train.sample_every=0",
                 f"train.device={args.device}", *args.overrides]
    cfg = load_config(args.preset, overrides)
    shapes = cfg.data.dataset == "bouncing_shapes"
    device = resolve_device(args.device)
    fvd = None
    if not args.no_fvd:
        fvd = FVD(reference_videos(cfg, args.reference or args.num), args.weights, device)
    fresh = cfg.train.lr_decay_over == "minutes"  # each point is its own run, its cosine ending with it
    procs = demo_processes(args.procs, device, cfg.train.batch_size)
    trained_s = 0.0
    for k in range(1, args.points + 1):
        if fresh:
            run = out / f"run-{k}"
            point = overrides + [f"train.minutes={segment * k}", f"train.out_dir={run}"]
            summary = spawn_local(train_preset, procs, (args.preset, point, False, True))
            trained_s = summary["seconds"]
        else:
            run = resumed
            summary = spawn_local(train_preset, procs, (args.preset, overrides, k > 1, k == 1))
            trained_s += summary["seconds"]
        start = time.perf_counter()
        system, _ = load_system(run, ema=True, device=device)
        prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(args.num)] if system.spec.text_dim else None
        cond = make_conditioning(system, args.num, prompts=prompts) if prompts else None
        videos = sample_videos(system, args.num, seed=0, cond=cond, progress=False)
        sample_s = time.perf_counter() - start
        png = out / f"point-{k}.png"
        write_video(png, videos[:16])
        row = {"preset": args.preset, "point": k, "run": "fresh" if fresh else "resumed",
               "train_minutes": round(trained_s / 60, 2), "step": summary["final_step"], "procs": procs,
               "num": args.num, "sample_s": round(sample_s, 1), "png": str(png)}
        if shapes:
            score = consistency(videos)
            row.update({key: score[key] for key in ("consistency", "present", "color", "shape", "motion", "empty")})
        if fvd is not None:
            row["fvd"] = round(fvd(videos), 2)
        print(json.dumps(row), flush=True)
        if summary["final_step"] >= cfg.train.steps:
            print(json.dumps({"note": f"train.steps={cfg.train.steps} reached before the budget; stopping"}))
            break


if __name__ == "__main__":
    main()
