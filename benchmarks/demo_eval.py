"""Score a trained bouncing-shapes text-to-video checkpoint as the issue-15 tables in benchmarks/README.md do.

Samples ``--num`` videos from a run's newest checkpoint (EMA weights, seed 0, the config's sampler unless
overridden) with `kinema demo`'s 8 prompts cycled, and prints one JSON line per guidance weight:

- ``pass`` / ``pass8``: the share of all samples and the count among the first 8 that pass the four
  checks of kinema.metrics.consistency (default shape tolerance), ``strict`` / ``strict8`` the same with
  ``shape_tolerance=0`` (the check of the tables written before 2026-12-05);
- each check's share, prompt following (colour / shape / direction, kinema.metrics.prompt_following);
- ``object_px``: the median object area over the frames of the first 16 samples (the data's is 100 px at
  32x32), which shows how much guidance inflates the objects.

    kinema demo --out runs/demo                      # or a training seed, as kinema demo trains (2 processes):
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m kinema train demo_text train.minutes=7 \
        train.seed=1 train.out_dir=runs/s1
    python benchmarks/demo_eval.py runs/s1                                          # the config's w (4)
    python benchmarks/demo_eval.py runs/s1 --guidance 1 2 4 --steps 32
    python benchmarks/demo_eval.py runs/s1 --interval=-4:0                            # guided at -4 <= log-SNR < 0

``--trace`` also prints, for each sample that fails the shape check, the sampling step (and its log-SNR) from
which the sampler's clean estimate x̂ fails that check at every later step: whether a clip's two shapes were set
at the noisy first steps or only at the last ones. A last line sums those up. It checks every sample's x̂ at every
step (a few seconds more).

Note that the first 8 of ``--num`` samples are not the demo's own 8 rows: the demo samples 8 in one batch,
so its noise differs (``--num 8`` reproduces them).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from kinema.cli import DEMO_PROMPTS
from kinema.data.io import write_video
from kinema.diffusion.guidance import check_interval
from kinema.metrics.consistency import UNKNOWN, check_video, consistency, consistent_shape, frame_objects
from kinema.metrics.prompt_following import prompt_following
from kinema.pipelines.sample import make_conditioning, sample_videos
from kinema.system import load_system


def score(videos: torch.Tensor, prompts: list[str]) -> dict:
    """The numbers of one row of the tables (see the module docstring)."""
    tolerant, strict = consistency(videos), consistency(videos, shape_tolerance=0.0)
    first = videos[:8]
    follow = prompt_following(videos, prompts)
    pixels = np.concatenate([frame_objects(v)["pixels"] for v in videos[:16]])
    return {
        "pass": round(tolerant["consistency"], 3),
        "pass8": sum(consistency(first)["per_sample"]),
        "strict": round(strict["consistency"], 3),
        "strict8": sum(consistency(first, shape_tolerance=0.0)["per_sample"]),
        **{k: round(tolerant[k], 3) for k in ("present", "color", "shape", "motion", "empty")},
        "prompt_color": round(follow["color_accuracy"], 3),
        "prompt_shape": round(follow.get("shape_accuracy", float("nan")), 3),
        "prompt_direction": round(follow["direction_accuracy"], 3),
        "object_px": float(np.median(pixels)),
        "num": len(videos),
    }


def failing_since(passes: list[bool]) -> int:
    """The first step from which the shape check fails at every later step (``passes``: one per step)."""
    k = len(passes)
    while k > 0 and not passes[k - 1]:
        k -= 1
    return k


class ShapeTrace:
    """``on_step`` hook of sample_videos: whether each sample's x̂ passes the shape check at every step."""

    def __init__(self, system) -> None:
        self.system, self.passes, self.logsnrs = system, {}, {}

    def __call__(self, first: int, step: int, logsnr: float, x_hat: torch.Tensor) -> None:
        self.logsnrs[step] = logsnr
        frames = self.system.space.decode(x_hat).float().clamp(-1, 1).cpu()
        for j, video in enumerate(frames):
            objects = frame_objects(video)
            ok = bool((objects["shape"] != UNKNOWN).all()) and consistent_shape(objects["ious"])
            self.passes.setdefault(first + j, []).append(ok)

    def report(self, videos: torch.Tensor, prompts: list[str], scored: dict) -> list[dict]:
        """One row per failing sample, then a summary row."""
        rows = []
        for i, video in enumerate(videos):
            check = check_video(video, scored["max_step"], scored["min_pixels"], scored["shape_tolerance"])
            if check["passed"]:
                continue
            row = {"trace": i, "prompt": prompts[i], "failed": [c for c in ("present", "color", "shape", "motion")
                                                                if not check[c]], "shapes": check["shapes"]}
            k = failing_since(self.passes[i])
            if "shape" in row["failed"] and k < len(self.passes[i]):  # (an object under min_pixels passes here)
                row.update(shape_fails_from_step=k, from_logsnr=round(self.logsnrs[k], 2))
            rows.append(row)
        flips = [r for r in rows if "from_logsnr" in r]
        rows.append({"trace_summary": {"failing": len(rows), "shape_failures": len(flips),
                                       "set_at_logsnr_below_0": sum(r["from_logsnr"] < 0 for r in flips),
                                       "steps": len(self.logsnrs)}})
        return rows


def parse_interval(text: str, parser: argparse.ArgumentParser):
    """``--interval``: 'config', 'none', 'HI' or 'LO:HI' (log-SNR; an empty end is unbounded)."""
    if text in ("config", "none"):
        return None if text == "none" else text
    lo, _, hi = text.rpartition(":")
    try:
        return check_interval([float(v) if v.strip() else None for v in (lo, hi)], "--interval")
    except ValueError as err:
        parser.error(f"{err} (from {text!r}; write 'config', 'none', HI or LO:HI)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory or checkpoint of a text-conditional bouncing-shapes model")
    p.add_argument("--num", type=int, default=64, help="samples per guidance weight (default 64)")
    p.add_argument("--guidance", type=float, nargs="+", default=[None],
                   help="guidance weights to score (default: the config's sample.guidance)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--sampler", choices=["ddpm", "ddim", "dpmpp"], default=None)
    p.add_argument("--interval", default="config",
                   help="guide only below this log-SNR, or in LO:HI (either end may be empty: ':0' is '0'; "
                        "--interval=-6:0 also leaves the highest-noise steps unguided); 'none': at every step; "
                        "default: the config's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--trace", action="store_true",
                   help="for each sample failing the shape check, print the step from which its x̂ fails it for good")
    p.add_argument("--png", default=None,
                   help="write the first 8 samples of each weight as a PNG grid (rows: samples; '{w}' in the name "
                        "becomes the weight), e.g. RUN/eval-w{w}.png")
    args = p.parse_args()
    if args.num < 1:
        p.error(f"--num must be >= 1, got {args.num}")

    system, ckpt = load_system(args.run, ema=True, device=args.device)
    if not system.spec.text_dim:
        p.error(f"{ckpt} is not text-conditional: this benchmark samples with the demo's prompts")
    prompts = [DEMO_PROMPTS[i % len(DEMO_PROMPTS)] for i in range(args.num)]
    cond = make_conditioning(system, args.num, prompts=prompts)
    interval = parse_interval(args.interval, p)
    for w in args.guidance:
        start = time.time()
        trace = ShapeTrace(system) if args.trace else None
        videos = sample_videos(system, args.num, steps=args.steps, sampler=args.sampler, seed=args.seed, cond=cond,
                               guidance=w, guidance_interval=interval, on_step=trace)
        row = {"checkpoint": str(ckpt), "guidance": system.cfg.sample.guidance if w is None else w,
               "interval": args.interval, "steps": args.steps or system.cfg.sample.steps,
               "sampler": args.sampler or system.cfg.sample.sampler,
               **score(videos, prompts), "sampling_s": round(time.time() - start, 1)}
        print(json.dumps(row), flush=True)
        for line in trace.report(videos, prompts, consistency(videos)) if trace else ():
            print(json.dumps(line), flush=True)
        if args.png:
            write_video(args.png.replace("{w}", f"{row['guidance']:g}"), videos[:8], fps=system.cfg.sample.fps)


if __name__ == "__main__":
    main()
