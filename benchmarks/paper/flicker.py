"""Flicker of decoded videos with and without Video LDM's temporal decoder (Blattmann et al. 2023,
section 3.1.1: fine-tuning the decoder on video with temporal layers and a 3D patch discriminator removes
the flicker of frame-wise decoding).

Trains (or takes, --image-ae / --temporal-decoder) the image autoencoder of the preset
``image_ae_bouncing_shapes`` on single frames and the temporal decoder of
``temporal_decoder_bouncing_shapes`` on 8-frame clips around it, then encodes held-out bouncing-shapes
clips (a seed the training never saw) and decodes them with each. Prints one JSON line with, per decoder:

- ``flicker``: mean |x_{f+1} - x_f| of the decoded videos (``real_flicker``: of the real clips) and
  ``flicker_ratio`` = decoded / real (1 = the real clips' frame-to-frame change);
- ``error_flicker``: mean |e_{f+1} - e_f| of the reconstruction error e = x_hat - x: the part of the
  frame-to-frame change that the real motion does not explain (0 for a decoder whose errors are constant
  over time);
- ``psnr``: reconstruction PSNR (dB, data range 2 for [-1, 1]).

Usage (CPU, minutes): ``python benchmarks/paper/flicker.py [--ae-steps 600 --td-steps 300 --clips 64]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from kinema.config import load_config
from kinema.data.synthetic import BouncingShapes
from kinema.system import load_autoencoder
from kinema.train.loop import Trainer


def flicker(video: torch.Tensor) -> float:
    """Mean |x_{f+1} - x_f| over a batch of videos ``[B, C, F, H, W]``."""
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean().item()


def psnr(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """PSNR in dB for [-1, 1] data (peak-to-peak range 2), over the whole batch."""
    mse = (x_hat.clamp(-1, 1) - x).square().mean().item()
    return 10.0 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()


def scores(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    return {"flicker": flicker(x_hat), "flicker_ratio": flicker(x_hat) / flicker(x),
            "error_flicker": flicker(x_hat - x), "psnr": psnr(x_hat, x)}


def train(preset: str, out_dir: Path, steps: int, extra: dict) -> tuple[str, float]:
    """Train ``preset`` into ``out_dir`` for ``steps`` steps; (run directory, seconds)."""
    overrides = {"train.out_dir": str(out_dir), "train.steps": steps, "train.ckpt_every": max(1, steps // 4),
                 "train.sample_every": 0, "train.progress": False, "train.tensorboard": False,
                 "train.log_every": max(1, steps // 10), **extra}
    cfg = load_config(preset, [f"{k}={v}" for k, v in overrides.items()])
    start = time.time()
    Trainer(cfg, overwrite=True).fit()
    return str(out_dir), time.time() - start


def td_overrides(args, image_ae: str) -> dict:
    extra = {"model.temporal_decoder.base_path": image_ae, "train.autoencoder.disc": args.disc}
    if args.disc_start is not None:
        extra["train.autoencoder.disc_start"] = args.disc_start
    return extra


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae-steps", type=int, default=600)
    p.add_argument("--td-steps", type=int, default=300)
    p.add_argument("--clips", type=int, default=64, help="held-out 8-frame clips to score")
    p.add_argument("--image-ae", default=None, help="a trained image autoencoder (skip its training)")
    p.add_argument("--temporal-decoder", default=None, help="a trained temporal decoder (skip its training)")
    p.add_argument("--disc", default="3d", choices=["none", "2d", "3d"], help="the temporal decoder's discriminator")
    p.add_argument("--disc-start", type=int, default=None, help="the temporal decoder's disc_start (default: preset)")
    p.add_argument("--out", default="runs/paper/flicker")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    seconds = {}
    image_ae = args.image_ae
    if image_ae is None:
        with torch.enable_grad():
            image_ae, seconds["image_ae"] = train("image_ae_bouncing_shapes", out / "image_ae", args.ae_steps, {})
    tdec = args.temporal_decoder
    if tdec is None:
        with torch.enable_grad():
            tdec, seconds["temporal_decoder"] = train("temporal_decoder_bouncing_shapes", out / "temporal_decoder",
                                                      args.td_steps, td_overrides(args, image_ae))
    ae, td = load_autoencoder(image_ae).module, load_autoencoder(tdec).module
    data = BouncingShapes(num_frames=8, size=32, length=1_000_000, seed=12345)  # training used seed 0
    x = torch.stack([data[i]["video"] for i in range(args.clips)])  # [N, 3, 8, 32, 32]
    z = ae.encode(x)
    assert torch.equal(td.encode(x), z)  # the temporal decoder keeps the image encoder: one latent space
    result = {"benchmark": "flicker", "clips": args.clips, "frames": 8, "size": 32, "ae_steps": args.ae_steps,
              "td_steps": args.td_steps, "disc": args.disc, "disc_start": args.disc_start, "real_flicker": flicker(x),
              "image_ae": scores(ae.decode(z), x), "temporal_decoder": scores(td.decode(z), x),
              "alphas": [round(float(m.alpha), 4) for m in td.temporal], "train_seconds": seconds,
              "threads": torch.get_num_threads()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
