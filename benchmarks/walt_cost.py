"""FLOPs and activation memory of one W.A.L.T training step beside the U-Net of equal parameter count,
on the ``meta`` device (analysis, not measurement; seconds on any CPU). Prints one JSON line per
backbone per batch, with the fields of ``unet_cost.py`` (params_m, train_tflop and its conv /
attention / linear shares, saved_gib, scores_gib, eager traffic) plus ``matched_to``.

    python benchmarks/walt_cost.py                        # W.A.L.T hidden 1024 x 24 blocks vs the U-Net of equal size
    python benchmarks/walt_cost.py --walt-hidden 1024 --walt-depth 28 --batch 8 --frames 16 --size 64
    python benchmarks/walt_cost.py --walt-hidden 384 --walt-depth 20 --frames 4 --size 16 --batch 2   # tiny

Both backbones see the same input z ``[B, 3, frames, size, size]`` (the denoiser contract's z; in
W.A.L.T's own setting it would be a latent of the causal autoencoder). The U-Net keeps the shape of
``unet_args.py`` (multipliers, attention levels, residual blocks) and only its width is matched,
in multiples of 4, to the transformer's parameter count.
"""

from __future__ import annotations

import argparse
import json

from kinema.models import WALT
from unet_args import add_unet_args, unet_config
from unet_cost import model_step_cost, step_cost
from walt_args import add_walt_args, match_unet_width, param_count, walt_config, walt_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unet_args(p)
    add_walt_args(p)
    p.set_defaults(walt_hidden=1024, walt_depth=24, width=None)
    args = p.parse_args()
    cfg = walt_config(args, args.walt_hidden, args.walt_depth)
    name = walt_name(cfg, args.frames, args.size)
    target = param_count(lambda: WALT(cfg))
    unet = match_unet_width(target, lambda width: unet_config(args, width))
    for batch in args.batch:
        row = model_step_cost(lambda: WALT(cfg), name, cfg.in_channels, batch, args.frames, args.size,
                              cfg.gradient_checkpointing)
        print(json.dumps({"backbone": "walt", **row}), flush=True)
        row = step_cost(unet, batch, args.frames, args.size)
        print(json.dumps({"backbone": "unet3d", "matched_to": name, **row}), flush=True)


if __name__ == "__main__":
    main()
