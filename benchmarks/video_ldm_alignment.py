"""Does temporal alignment make an image model's frames one video? Prints one JSON line per model.

Loads a Video LDM checkpoint (``model.name=video_ldm``, e.g. the README toy recipe's
``runs/video_ldm_shapes``) and samples the same noise twice: with its trained temporal layers (the
aligned video model) and with every blend weight alpha forced to 1, which is exactly its frozen image
model applied to each frame independently (Video LDM, Blattmann et al. 2023, section 3.1; the
identity is exact, see ``kinema.models.temporal.mix_spatial_temporal``). Both are scored with the
bouncing-shapes temporal-consistency metric (:mod:`kinema.metrics.consistency`: one object, same
colour and shape in every frame, bounded motion), and so are unseen real clips (the ceiling).

    python benchmarks/video_ldm_alignment.py runs/video_ldm_shapes --num 32 --steps 64 --out /tmp/ldm_bench
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kinema.data.io import write_video
from kinema.metrics.consistency import consistency, reference_clips
from kinema.models.temporal import VideoLDM
from kinema.pipelines.sample import sample_videos
from kinema.system import load_system


def video_ldm_of(model: torch.nn.Module) -> VideoLDM:
    net = getattr(model, "net", model)  # inside a TextConditioned wrapper, or bare
    if not isinstance(net, VideoLDM):
        raise SystemExit(f"this checkpoint holds a {type(net).__name__}, not a video_ldm model")
    return net


def score(videos: torch.Tensor) -> dict:
    out = consistency(videos)
    out.pop("per_sample")
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def aligned_and_per_frame(system, num: int, steps: int, seed: int, sampler=None):
    """Yield ``(name, videos, seconds)`` for the aligned model, then for its image model per frame: every
    alpha forced to 1 (the spatial path only, bitwise; left so afterwards). Same noise (``seed``) for both."""
    net = video_ldm_of(system.model)
    for name in ("aligned", "image_model_per_frame"):
        if name == "image_model_per_frame":
            with torch.no_grad():
                for mixer in net.temporal:
                    mixer.mix_logit.fill_(float("inf"))  # alpha = 1: the spatial path only, bitwise
        start = time.time()
        videos = sample_videos(system, num, steps=steps, sampler=sampler, seed=seed, batch_size=16, progress=False)
        yield name, videos, round(time.time() - start, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", help="a video_ldm checkpoint or run directory")
    parser.add_argument("--num", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for <model>.png sample grids")
    args = parser.parse_args()

    system, ckpt = load_system(args.ckpt, device="cpu")
    net = video_ldm_of(system.model)
    alphas = [round(m.alpha.item(), 3) for m in net.temporal]
    c, f, h, w = system.space.shape()
    for name, videos, seconds in aligned_and_per_frame(system, args.num, args.steps, args.seed):
        row = {"model": name, "ckpt": str(ckpt), "frames": f, "size": h, "steps": args.steps, **score(videos),
               "seconds": seconds}
        if name == "aligned":
            row["alphas"] = alphas
        if args.out is not None:
            row["png"] = str(write_video(args.out / f"{name}.png", videos))
        print(json.dumps(row), flush=True)
    print(json.dumps({"model": "real_clips", "frames": f, "size": h, **score(reference_clips(args.num, f, h))}))


if __name__ == "__main__":
    main()
