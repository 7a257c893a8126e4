"""VDM (Ho et al. 2022) section 4.2 ablation: joint image-video training vs video-only.

    python benchmarks/paper/joint_training.py --smoke      # CPU, minutes; numbers not meaningful
    python benchmarks/paper/joint_training.py              # GPU-sized

Trains the same small VDM twice on 16-frame moving digits, once video-only and once with
``data.image_fraction`` of every item made of independent images (frames of other clips; temporal
attention masked between them), then prints one JSON line per run with its FVD (DDIM, 64 steps).
"""

from __future__ import annotations

import json

from common import FVDScorer, parser, size_of, train

from kinema.pipelines.sample import sample_videos


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--image-fractions", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--sample-steps", type=int, default=64)
    args = p.parse_args()
    s = size_of(args)
    scorer = FVDScorer(args)
    for fraction in args.image_fractions:
        model, cfg, seconds = train(args, f"joint-{fraction:g}", **{"data.image_fraction": fraction})
        videos = sample_videos(model, s["num"], steps=args.sample_steps, sampler="ddim", seed=0)
        print(json.dumps({"benchmark": "joint_image_video", "image_fraction": fraction, "train_steps": s["steps"],
                          "num": s["num"], "fvd": scorer(videos), "train_seconds": round(seconds, 1),
                          "smoke": args.smoke, "device": str(scorer.device)}), flush=True)


if __name__ == "__main__":
    main()
