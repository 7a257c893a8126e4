"""VDM (Ho et al. 2022) sections 3.1 and 4.3 ablation: reconstruction guidance vs replacement for
autoregressive temporal extension.

    python benchmarks/paper/extension.py --smoke           # CPU, minutes; numbers not meaningful
    python benchmarks/paper/extension.py                   # GPU-sized
    python benchmarks/paper/extension.py --ckpt runs/x     # skip training: extend with a checkpoint

Trains one small unconditional VDM on short (``--window``, default 8) frame moving digits, or loads
``--ckpt``. Then it gives the model the first ``--given`` frames of unseen real clips and extends
them autoregressively to ``--frames`` frames (windows of ``--window`` frames whose first ``--given``
are known) with the replacement method and with reconstruction guidance at every ``--w-r``. Prints
one JSON line per setting: FVD of the extended videos against real clips of ``--frames`` frames, and
the MSE (on the [-1, 1] scale) of the generated frames to the clips' true continuation. Two
reference rows bracket them: ``real`` (the true clips themselves: the FVD floor at this sample
size) and ``repeat_last`` (the last given frame held still: no motion at all).
"""

from __future__ import annotations

import json
import time

import torch
from common import FVDScorer, parser, real_clips, size_of, train

from kinema.system import load_system
from kinema.pipelines.extend import extend_video


def continuation_mse(video: torch.Tensor, truth: torch.Tensor, given: int) -> float:
    """Mean squared error between the frames after the first ``given`` of ``video`` and of ``truth``
    (both ``[N, C, F, H, W]`` in [-1, 1])."""
    return float(((video[:, :, given:].float() - truth[:, :, given:].float()) ** 2).mean())


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ckpt", default=None, help="extend with this unconditional moving-digits checkpoint")
    p.add_argument("--window", type=int, default=8, help="frames the model is trained on (one window)")
    p.add_argument("--given", type=int, default=4, help="real frames given, and known frames per window")
    p.add_argument("--frames", type=int, default=16, help="length of the extended videos")
    p.add_argument("--w-r", type=float, nargs="+", default=None,
                   help="reconstruction-guidance weights (default: 2 5, or 2 5 10 at full size)")
    p.add_argument("--sample-steps", type=int, default=None, help="DDIM steps per window (default: 16 smoke, 64)")
    args = p.parse_args()
    s = size_of(args)
    weights = args.w_r or ([2.0, 5.0] if args.smoke else [2.0, 5.0, 10.0])
    steps = args.sample_steps or (16 if args.smoke else 64)
    if args.ckpt:
        model, _ = load_system(args.ckpt, device=args.device)
        cfg = model.cfg
        seconds, train_steps = 0.0, None
        if cfg.data.dataset != "moving_digits" or model.spec.in_channels != 1:
            raise ValueError(f"--ckpt {args.ckpt}: needs a 1-channel moving_digits model, got dataset "
                             f"{cfg.data.dataset!r} with {model.spec.in_channels} channels")
    else:
        model, cfg, seconds = train(args, "extension", frames=args.window)
        train_steps = s["steps"]
    window, size = cfg.data.num_frames, cfg.data.size
    truth = real_clips(s["num"], args.frames, size, seed=54321)  # unseen by training and by the FVD reference
    scorer = FVDScorer(args, frames=args.frames, size=size)
    common = {"benchmark": "extension", "given": args.given, "frames": args.frames, "window": window,
              "num": s["num"], "sample_steps": steps, "train_steps": train_steps, "train_seconds": round(seconds, 1),
              "smoke": args.smoke, "device": str(scorer.device)}

    def report(method: str, video: torch.Tensor, w_r=None, sample_s=None) -> None:
        print(json.dumps({**common, "method": method, "w_r": w_r, "fvd": scorer(video),
                          "mse_continuation": continuation_mse(video, truth, args.given),
                          "sample_seconds": sample_s}), flush=True)

    report("real", truth)
    still = truth[:, :, args.given - 1:args.given].expand(-1, -1, args.frames - args.given, -1, -1)
    report("repeat_last", torch.cat([truth[:, :, :args.given], still], dim=2))
    for method, w_r in [("replacement", 0.0)] + [("reconstruction", w) for w in weights]:
        start = time.perf_counter()
        video = extend_video(model, truth[:, :, :args.given], args.frames, method=method,
                             overlap=args.given, window=window, recon_weight=w_r, steps=steps, sampler="ddim", seed=0)
        report(method, video, w_r=w_r if method == "reconstruction" else None,
               sample_s=round(time.perf_counter() - start, 1))


if __name__ == "__main__":
    main()
