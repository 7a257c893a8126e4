"""Imagen Video (Ho et al. 2022, section 2.5) / Salimans & Ho 2022: a progressively distilled 8-step
sampler against its many-step teacher on moving digits.

    python benchmarks/paper/distillation.py --smoke        # CPU, minutes; numbers not meaningful
    python benchmarks/paper/distillation.py                # GPU-sized: 256-step teacher -> 8 steps
    python benchmarks/paper/distillation.py --ckpt runs/x  # skip training the teacher

Trains one small unconditional VDM on 16-frame moving digits (or loads ``--ckpt``), distills it with
``kinema.train.distill.distill`` (the code behind ``kinema distill``) from ``--from-steps`` DDIM steps
down to ``--to-steps``, one halving per round, then samples from the same seed: the teacher with
``--from-steps``, the student with ``--to-steps``, and the teacher with ``--to-steps`` (what the
student must beat). Prints one JSON line per sampler (FVD against unseen real clips with the real I3D
weights, wall time per video, and the mean squared difference to the teacher's many-step video from
the same initial noise) and a last line with the three side by side. Imagen Video reports its
distilled 8-step models close to the teachers in quality at about 18x less sampling time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from common import FVDScorer, parser, size_of, train

from kinema.pipelines.sample import sample_videos
from kinema.system import load_system
from kinema.train.distill import distill


def timed_fvd(system, num: int, steps: int, scorer: FVDScorer) -> tuple[dict, torch.Tensor]:
    """FVD of ``num`` videos sampled with ``steps`` DDIM steps (seed 0: the same initial noise for every
    sampler), the sampling wall time per video, and the videos ``[num, C, F, H, W]``."""
    start = time.perf_counter()
    videos = sample_videos(system, num, steps=steps, sampler="ddim", seed=0, progress=False)
    seconds = time.perf_counter() - start
    return {"steps": steps, "fvd": round(scorer(videos), 1), "seconds_per_video": round(seconds / num, 3)}, videos


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ckpt", default=None, help="distill this unconditional moving-digits checkpoint (skip training)")
    p.add_argument("--from-steps", type=int, default=None, help="the teacher's DDIM steps (default 256; smoke 32)")
    p.add_argument("--to-steps", type=int, default=8, help="the student's DDIM steps (default 8)")
    p.add_argument("--round-steps", type=int, default=None,
                   help="training steps per halving (default: the teacher's training steps / 4; smoke 20)")
    p.add_argument("--distill-lr", type=float, default=1e-4, help="learning rate of the rounds (default 1e-4)")
    args = p.parse_args()
    s = size_of(args)
    from_steps = args.from_steps or (32 if args.smoke else 256)
    round_steps = args.round_steps or (20 if args.smoke else max(1, s["steps"] // 4))
    scorer = FVDScorer(args)
    start = time.perf_counter()
    if args.ckpt:
        teacher_run, train_s = Path(args.ckpt), 0.0
    else:
        train(args, "distill-teacher", **{"sample.steps": from_steps})
        teacher_run, train_s = Path(args.out) / "distill-teacher", time.perf_counter() - start
    start = time.perf_counter()
    runs = distill(teacher_run, Path(args.out) / "distilled", to_steps=args.to_steps, from_steps=from_steps,
                   round_steps=round_steps, overwrite=True,
                   overrides=[f"train.device={args.device}", f"train.batch_size={s['batch']}",
                              f"train.lr={args.distill_lr}", "train.log_every=50", "train.sample_every=0", "train.progress=false",
                              "train.tensorboard=false"])
    distill_s = time.perf_counter() - start
    teacher, _ = load_system(teacher_run, device=args.device)
    student, _ = load_system(runs[-1], device=args.device)
    runs_of = {"teacher": (teacher, from_steps), "student": (student, args.to_steps),
               "teacher_few_steps": (teacher, args.to_steps)}
    rows, videos = {}, {}
    for name, (system, steps) in runs_of.items():
        rows[name], videos[name] = timed_fvd(system, s["num"], steps, scorer)
        # fidelity to the teacher: the same noise should give the teacher's many-step video
        rows[name]["mse_to_teacher"] = round(float((videos[name] - videos["teacher"]).pow(2).mean()), 5)
    common = {"benchmark": "distillation", "num": s["num"], "smoke": args.smoke, "device": str(scorer.device)}
    for name, row in rows.items():
        print(json.dumps({**common, "sampler": name, **row}), flush=True)
    speedup = rows["teacher"]["seconds_per_video"] / max(rows["student"]["seconds_per_video"], 1e-9)
    print(json.dumps({**common, "summary": {k: (r["steps"], r["fvd"], r["seconds_per_video"], r["mse_to_teacher"])
                                            for k, r in rows.items()},
                      "speedup": round(speedup, 1), "rounds": len(runs), "round_steps": round_steps,
                      "teacher_train_seconds": round(train_s, 1), "distill_seconds": round(distill_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
