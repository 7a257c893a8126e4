"""Sampler and step count vs FVD (DDPM ancestral / DDIM / DPM-Solver++(2M) at 8-256 steps).

    python benchmarks/paper/samplers.py --smoke            # CPU, minutes; numbers not meaningful
    python benchmarks/paper/samplers.py                    # GPU-sized: steps 8 16 32 64 128 256

Trains one small VDM on 16-frame moving digits, then samples it with every sampler at every step
count from the same seed and prints one JSON line per setting with its FVD.
"""

from __future__ import annotations

import json
import time

from common import FVDScorer, parser, size_of, train

from kinema.pipelines.sample import sample_videos


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim", "dpmpp"])
    p.add_argument("--sample-steps", type=int, nargs="+", default=None)
    args = p.parse_args()
    s = size_of(args)
    grid = args.sample_steps or ([8, 32] if args.smoke else [8, 16, 32, 64, 128, 256])
    scorer = FVDScorer(args)
    model, cfg, seconds = train(args, "samplers")
    for sampler in args.samplers:
        for steps in grid:
            start = time.perf_counter()
            videos = sample_videos(model, s["num"], steps=steps, sampler=sampler, seed=0)
            sample_s = time.perf_counter() - start
            print(json.dumps({"benchmark": "samplers", "sampler": sampler, "steps": steps, "num": s["num"],
                              "fvd": scorer(videos), "sample_seconds": round(sample_s, 1),
                              "train_steps": s["steps"], "smoke": args.smoke, "device": str(scorer.device)}),
                  flush=True)


if __name__ == "__main__":
    main()
