"""Does a text-conditioned bouncing-shapes model follow its prompts? Prints one JSON object.

Trains the ``vdm_bouncing_shapes_text`` preset (or loads ``--ckpt``), samples videos for prompts
covering every colour x direction (shapes cycled), and measures with the analytic classifiers of
:mod:`kinema.metrics.prompt_following` how often the dominant colour and the initial direction of
motion match the prompt, for each guidance weight in ``--guidance`` (0 = no guidance), against chance
(1 / number of colours, 1 / number of directions). The same classifiers on the dataset's own clips
give the ceiling of the measurement (direction is ambiguous for clips that bounce at once).

    python benchmarks/prompt_following.py --minutes 10 data.size=16        # train, then measure
    python benchmarks/prompt_following.py --ckpt runs/vdm_bouncing_shapes_text --guidance 0 2 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kinema.config import load_config
from kinema.data.synthetic import BouncingShapes
from kinema.metrics.prompt_following import prompt_following
from kinema.system import load_system
from kinema.pipelines.sample import make_conditioning, sample_videos


def benchmark_prompts(repeats: int = 1) -> list[str]:
    """Every colour x direction, the shape cycling, ``repeats`` times."""
    prompts = []
    for c in range(len(BouncingShapes.COLORS)):
        for d in range(len(BouncingShapes.DIRECTIONS)):
            shape = (c * len(BouncingShapes.DIRECTIONS) + d) % len(BouncingShapes.SHAPES)
            prompts.append(BouncingShapes.caption_for(c, shape, d))
    return prompts * repeats


def dataset_ceiling(cfg, num: int = 200) -> dict:
    """The classifiers on ground-truth clips of the training data (with their own captions)."""
    ds = BouncingShapes(num_frames=cfg.data.num_frames, size=cfg.data.size, length=num, seed=cfg.data.seed + 1)
    items = [ds[i] for i in range(num)]
    return prompt_following(torch.stack([it["video"] for it in items]), [it["caption"] for it in items])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=None, help="measure this checkpoint / run directory instead of training")
    p.add_argument("--config", default="vdm_bouncing_shapes_text", help="preset to train (without --ckpt)")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget (without --ckpt)")
    p.add_argument("--out", default="runs/prompt_following", help="run directory for training")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 4.0])
    p.add_argument("--repeats", type=int, default=2, help="samples per colour x direction prompt")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the preset (without --ckpt)")
    args = p.parse_args()

    result: dict = {"benchmark": "prompt_following"}
    if args.ckpt is None:
        from kinema.train.loop import Trainer

        cfg = load_config(args.config, [f"train.out_dir={args.out}", f"train.minutes={args.minutes}",
                                        "train.progress=false", *args.overrides])
        summary = Trainer(cfg).fit()
        result["train"] = {"steps": summary["final_step"], "seconds": round(summary["seconds"], 1)}
        args.ckpt = args.out
    system, ckpt = load_system(args.ckpt)
    cfg = system.cfg
    result.update(checkpoint=str(ckpt), device=str(system.device),
                  video=[cfg.data.num_frames, cfg.data.size, cfg.data.size], sampler=cfg.sample.sampler,
                  steps=args.steps or cfg.sample.steps)
    prompts = benchmark_prompts(args.repeats)
    cond = make_conditioning(system, len(prompts), prompts=prompts)
    for w in args.guidance:
        start = time.time()
        videos = sample_videos(system, len(prompts), steps=args.steps, seed=args.seed, cond=cond, guidance=w,
                               guidance_low=None, batch_size=32, progress=False)
        scores = prompt_following(videos, prompts)
        scores["seconds"] = round(time.time() - start, 1)
        result[f"guidance_{w:g}"] = scores
    result["dataset_clips"] = dataset_ceiling(cfg)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
