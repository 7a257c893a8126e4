"""VDM (Ho et al. 2022) section 4.2 ablation: joint image-video training vs video-only.

    python benchmarks/paper/joint_training.py --smoke      # CPU, minutes; numbers not meaningful
    python benchmarks/paper/joint_training.py --cpu --seeds 0 1 --image-fractions 0 0.333   # CPU, ~1.5 h on a free core
    python benchmarks/paper/joint_training.py              # GPU-sized

Trains the same small VDM on 16-frame moving digits, video-only and with ``data.image_fraction`` of
every item made of independent images (frames of other clips; temporal attention masked between
them; 0.333 appends 8 images to the 16 frames, VDM's largest setting), once per training seed
(``train.seed``: initial weights and noise draws; the data and the sampling noise stay fixed), then
prints one JSON line per run with its FVD (DDIM, 64 steps) and, per image fraction, a summary line
with the mean and the spread (max - min) over seeds: a difference between fractions means something
only where it exceeds that spread.
"""

from __future__ import annotations

import json

from common import FVDScorer, parser, size_of, train

from kinema.pipelines.sample import sample_videos


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--image-fractions", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--sample-steps", type=int, default=64)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (train.seed) per fraction")
    args = p.parse_args()
    s = size_of(args)
    scorer = FVDScorer(args)
    fvds: dict[float, list[float]] = {}
    for seed in args.seeds:  # seed-major: each finished seed is a complete comparison
        for fraction in args.image_fractions:
            model, cfg, seconds = train(args, f"joint-{fraction:g}-seed{seed}",
                                        **{"data.image_fraction": fraction, "train.seed": seed})
            videos = sample_videos(model, s["num"], steps=args.sample_steps, sampler="ddim", seed=0)
            fvd = scorer(videos)
            fvds.setdefault(fraction, []).append(fvd)
            print(json.dumps({"benchmark": "joint_image_video", "image_fraction": fraction, "seed": seed,
                              "train_steps": s["steps"], "num": s["num"], "fvd": round(fvd, 1),
                              "train_seconds": round(seconds, 1), "smoke": args.smoke, "device": str(scorer.device)}),
                  flush=True)
    for fraction, values in fvds.items():
        print(json.dumps({"benchmark": "joint_image_video_summary", "image_fraction": fraction, "seeds": args.seeds,
                          "fvd_mean": round(sum(values) / len(values), 1), "fvd_spread": round(max(values) - min(values), 1),
                          "fvd": [round(v, 1) for v in values]}), flush=True)


if __name__ == "__main__":
    main()
