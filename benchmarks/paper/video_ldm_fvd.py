"""Video LDM: FVD of the aligned video model vs the same image LDM sampled frame by frame. Prints JSON lines.

Blattmann et al. 2023 ("Align your Latents"), section 3.1 / table 1: inserting temporal layers into a frozen
image LDM and training only those turns independent frames into one video. This samples a Video LDM
checkpoint (``model.name=video_ldm``, e.g. the latent toy recipe's ``runs/video_ldm_latent_shapes``, or the
pixel one's ``runs/video_ldm_shapes``) twice from the same noise: with its trained temporal layers
("aligned") and with every blend weight alpha forced to 1 ("image_model_per_frame": exactly the frozen image
model on each frame, the identity of ``kinema.models.temporal.mix_spatial_temporal``; the same switch as
``benchmarks/video_ldm_alignment.py``). Each set is scored against unseen real bouncing-shapes clips by

- FVD with kinema's I3D and the real Kinetics-400 weights (``kinema assets fetch i3d`` once, or
  ``--weights PATH``; clips shorter than 9 frames are repeated in time on both sides,
  ``kinema.metrics.consistency.repeat_frames``). There is no substitute feature extractor: without the
  weights the FVD fields are null and ``feature_extractor`` says why (``--no-fvd`` skips it on purpose);
- the bouncing-shapes consistency metric (``kinema.metrics.consistency``: one object, same colour and shape
  in every frame, bounded motion).

A second set of real clips (another seed) gives the FVD floor ("real_clips"). Sampling and I3D run on
``--device`` (CPU by default).

    python benchmarks/paper/video_ldm_fvd.py runs/video_ldm_latent_shapes --num 32 --steps 32 --out /tmp/fvd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared helpers

from quality import FVD  # noqa: E402
from video_ldm_alignment import aligned_and_per_frame, score, video_ldm_of  # noqa: E402

from kinema.data.io import write_video  # noqa: E402
from kinema.metrics.assets import resolve_weights  # noqa: E402
from kinema.metrics.consistency import reference_clips  # noqa: E402
from kinema.system import load_system, resolve_device  # noqa: E402

REFERENCE_SEED, FLOOR_SEED = 12345, 54321  # the training data uses seed 0: both sets are unseen


def fvd_scorer(args, reference: torch.Tensor) -> tuple[FVD | None, str]:
    """(the FVD against ``reference``, or None, and the feature extractor's description)."""
    if args.no_fvd:
        return None, "none (--no-fvd)"
    try:
        path = resolve_weights("i3d", args.weights)
    except (FileNotFoundError, ValueError) as e:
        return None, f"none: I3D weights absent ({e})"
    return FVD(reference, args.weights, resolve_device(args.device)), f"i3d-kinetics-400 ({path})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", help="a video_ldm checkpoint or run directory")
    p.add_argument("--num", type=int, default=32, help="samples per model (and real clips per set)")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--sampler", default=None, help="default: the checkpoint's sample.sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, help="I3D safetensors (default: the cached asset)")
    p.add_argument("--no-fvd", action="store_true", help="consistency only")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None, help="folder for <model>.png sample grids")
    args = p.parse_args()

    system, ckpt = load_system(args.ckpt, device=args.device)
    net = video_ldm_of(system.model)
    alphas = [round(m.alpha.item(), 3) for m in net.temporal]
    frames, size = system.cfg.data.num_frames, system.cfg.data.size
    reference = reference_clips(args.num, frames, size, seed=REFERENCE_SEED)
    fvd, extractor = fvd_scorer(args, reference)
    common = {"ckpt": str(ckpt), "space": system.space.name, "frames": frames, "size": size, "num": args.num,
              "feature_extractor": extractor}
    for name, videos, seconds in aligned_and_per_frame(system, args.num, args.steps, args.seed, args.sampler):
        row = {"model": name, **common, "steps": args.steps, "sampler": args.sampler or system.cfg.sample.sampler,
               "fvd": None if fvd is None else round(fvd(videos), 1), **score(videos), "sampling_seconds": seconds}
        if name == "aligned":
            row["alphas"] = alphas
        if args.out is not None:
            row["png"] = str(write_video(args.out / f"{name}.png", videos))
        print(json.dumps(row), flush=True)
    floor = reference_clips(args.num, frames, size, seed=FLOOR_SEED)
    print(json.dumps({"model": "real_clips", **common, "fvd": None if fvd is None else round(fvd(floor), 1),
                      **score(floor)}), flush=True)


if __name__ == "__main__":
    main()
