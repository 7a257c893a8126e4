"""Conditioning augmentation sweep (Imagen Video section 2.5; Cascaded Diffusion Models section 4.1):
which fixed augmentation level works best at sampling time.

    python benchmarks/paper/sr_augmentation.py --smoke   # CPU, minutes
    python benchmarks/paper/sr_augmentation.py           # GPU-sized

Trains one x2 SSR stage with t_aug ~ U[0, --aug-max], then upsamples degraded unseen clips at each
sampling level t_aug in --levels, from two kinds of input: `clean` (the true downsampled clip) and
`corrupted` (the same plus Gaussian noise of std --corrupt, standing in for the artefacts of a
lower stage, which is what augmentation is for). One JSON line per (input, level): PSNR against the
true high-resolution clip and the colour shift, plus the input upsampled bilinearly as a reference.
"""

from __future__ import annotations

import json

import torch

from kinema.resize import resize_video
from sr_common import colour_shift, parser, psnr, real_pairs, size_of, train_ssr, upsample


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--aug-max", type=float, default=0.5)
    p.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3, 0.5])
    p.add_argument("--corrupt", type=float, default=0.15, help="std of the noise on the `corrupted` inputs")
    args = p.parse_args()
    s = size_of(args)
    high, low = real_pairs(args)
    corrupted = (low + args.corrupt * torch.randn(low.shape, generator=torch.Generator().manual_seed(7))).clamp(-1, 1)
    for name, inputs in (("clean", low), ("corrupted", corrupted)):  # reference: the input, upsampled bilinearly
        up = resize_video(inputs, tuple(high.shape[-2:]), antialias=False)
        print(json.dumps({"benchmark": "sr_augmentation", "input": name, "level": None, "method": "bilinear",
                          "psnr": round(psnr(up, high), 2), "num": s["num"], "smoke": args.smoke}), flush=True)
    system, seconds = train_ssr(args, "ssr_aug", "v", args.aug_max)
    for name, inputs in (("clean", low), ("corrupted", corrupted)):
        for level in args.levels:
            out = upsample(system, inputs, level, s["sample_steps"])
            print(json.dumps({"benchmark": "sr_augmentation", "input": name, "level": level, "method": "ssr",
                              "psnr": round(psnr(out, high), 2), "shift": round(colour_shift(out, low)["shift"], 4),
                              "aug_max": args.aug_max, "train_steps": s["steps"], "train_seconds": round(seconds, 1),
                              "num": s["num"], "smoke": args.smoke}), flush=True)


if __name__ == "__main__":
    main()
