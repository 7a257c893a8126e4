"""Long videos from a text-conditioned model: does the continuation keep the prompt's object?

    python benchmarks/conditioned_extension.py RUN --frames 24 --w-r 0 2 5 10 20 --num 16

RUN is a text-conditioned bouncing-shapes checkpoint (e.g. ``kinema train vdm_bouncing_shapes_text
data.size=16 train.steps=1500``). For each prompt (cycled over ``--num`` videos) it samples one
clip of the training length with the prompt, then extends it to ``--frames`` frames by
reconstruction guidance (VDM eq. 7) at each reconstruction weight w_r, (a) with the same prompt and
classifier-free guidance and (b) unconditionally (the old behaviour of `kinema extend`, which took no
prompt). One JSON line per setting: the temporal-consistency score of the *whole* extended videos
(input + continuation; speeds judged per training clip) and the share of videos whose object keeps
the prompt's colour in every frame. The first row scores the sampled clips themselves.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.consistency import consistency, frame_objects
from kinema.pipelines.extend import extend_video
from kinema.pipelines.sample import make_conditioning, sample_videos
from kinema.system import load_system

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow circle moving down"]


def colour_kept(videos: torch.Tensor, prompts: list[str]) -> float:
    """Share of videos whose object has the prompt's colour in every frame."""
    kept = 0
    for video, prompt in zip(videos, prompts):
        want = next(i for i, name in enumerate(BouncingShapes.COLORS) if name in prompt.split())
        kept += all(c == want for c in frame_objects(video)["color"].tolist())
    return kept / len(videos)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--num", type=int, default=16)
    p.add_argument("--w-r", type=float, nargs="+", default=[0.0, 2.0, 5.0, 10.0, 20.0])
    p.add_argument("--guidance", type=float, default=None, help="classifier-free weight (default sample.guidance)")
    p.add_argument("--steps", type=int, default=None)
    args = p.parse_args()

    system, _ = load_system(args.run, device="cpu")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.num)]
    cond = make_conditioning(system, args.num, prompts=prompts)
    clips = sample_videos(system, args.num, cond=cond, guidance=args.guidance, steps=args.steps, progress=False)
    train_frames = clips.shape[2]

    def row(videos, **info):
        score = consistency(videos, train_frames=train_frames)
        return {**info, "frames": videos.shape[2], "consistency": score["consistency"], "color": score["color"],
                "shape": score["shape"], "motion": score["motion"], "empty": score["empty"],
                "prompt_colour_kept": colour_kept(videos, prompts)}

    print(json.dumps(row(clips, setting="sampled clips")), flush=True)
    for w_r in args.w_r:
        for conditioned in (True, False):
            start = time.perf_counter()
            videos = extend_video(system, clips, args.frames, recon_weight=w_r, cond=cond if conditioned else None,
                                  guidance=args.guidance if conditioned else 0.0, steps=args.steps, progress=False)
            print(json.dumps(row(videos, setting="extend", w_r=w_r, prompt=conditioned,
                                 seconds=round(time.perf_counter() - start, 1))), flush=True)


if __name__ == "__main__":
    main()
