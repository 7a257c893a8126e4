"""Sanity check of FVD with the real I3D weights (fetch them first: `kinema assets fetch i3d`).

    python benchmarks/fvd_sanity.py --num 16          # prints one JSON line

Two disjoint sets of moving-digits clips (16 frames, 64x64) should be close; the same clips with
their frames shuffled in time (identical frame content, broken motion) should be far. Also reports
the I3D output shape and how spread out its logits are.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from kinema.data.io import to_uint8
from kinema.data.synthetic import MovingDigits
from kinema.metrics.assets import resolve_weights
from kinema.metrics.features import extract_features, preprocess_i3d
from kinema.metrics.frechet import GaussianStats, frechet_from_stats
from kinema.metrics.i3d import load_i3d
from kinema.system import resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=16, help="clips per set")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--weights", default=None)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    start = time.perf_counter()
    device = resolve_device(args.device)
    net = load_i3d(resolve_weights("i3d", args.weights), device)
    ds = MovingDigits(num_frames=args.frames, size=args.size, length=100_000, seed=0)
    a = np.stack([to_uint8(ds[i]["video"]) for i in range(args.num)])
    b = np.stack([to_uint8(ds[50_000 + i]["video"]) for i in range(args.num)])
    rng = np.random.default_rng(0)
    shuffled = np.stack([clip[rng.permutation(args.frames)] for clip in b])

    def feats(clips, name):
        return extract_features(net, clips, preprocess_i3d, batch_size=4, total=len(clips), desc=name)

    fa, fb, fs = feats(a, "set A"), feats(b, "set B"), feats(shuffled, "B shuffled")
    sa, sb, ss = (GaussianStats.from_features(f) for f in (fa, fb, fs))
    print(json.dumps({
        "num_per_set": args.num, "frames": args.frames, "size": args.size, "device": str(device),
        "i3d_output_shape": list(fa.shape), "logit_std_mean": float(fa.std(1).mean()),
        "top1_classes_A": sorted(set(int(c) for c in fa.argmax(1))),
        "fvd_A_vs_B": frechet_from_stats(sa, sb), "fvd_A_vs_B_shuffled": frechet_from_stats(sa, ss),
        "fvd_B_vs_B_shuffled": frechet_from_stats(sb, ss), "fvd_A_vs_A": frechet_from_stats(sa, sa),
        "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
