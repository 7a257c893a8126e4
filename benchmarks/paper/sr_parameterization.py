"""eps vs v parameterization for a spatial super-resolution stage: colour shift (Imagen Video, section 2.4).

    python benchmarks/paper/sr_parameterization.py --smoke   # CPU, minutes
    python benchmarks/paper/sr_parameterization.py           # GPU-sized: 16 x 64^2, 5000 steps

Trains two x2 SSR stages that differ only in the parameterization (eps with eps-MSE, v with v-MSE),
upsamples the same degraded unseen clips with each (no augmentation, DDPM, same seed) and prints one
JSON line per model: the colour shift against the upsampled input (mean per-channel difference), its
drift over frames and PSNR against the true high-resolution clips.
"""

from __future__ import annotations

import json

from sr_common import colour_shift, parser, psnr, real_pairs, size_of, train_ssr, upsample


def main() -> None:
    args = parser(__doc__).parse_args()
    s = size_of(args)
    high, low = real_pairs(args)
    for parameterization in ("eps", "v"):
        system, seconds = train_ssr(args, f"ssr_{parameterization}", parameterization)
        out = upsample(system, low, 0.0, s["sample_steps"])
        print(json.dumps({"benchmark": "sr_parameterization", "parameterization": parameterization,
                          **colour_shift(out, low), "psnr": round(psnr(out, high), 2),
                          "train_steps": s["steps"], "train_seconds": round(seconds, 1), "num": s["num"],
                          "smoke": args.smoke}), flush=True)


if __name__ == "__main__":
    main()
