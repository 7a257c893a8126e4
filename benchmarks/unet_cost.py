"""FLOPs and bytes of one U-Net training step, computed on the ``meta`` device (no compute, no
memory, seconds on any CPU); prints one JSON line per configuration. This is analysis, not
measurement: it says how much work and activation memory a step needs, so a measured step time
can be read as a fraction of what the hardware could do.

    python benchmarks/unet_cost.py                         # the reference config, widths 64 and 128
    python benchmarks/unet_cost.py --width 64 --batch 8 16 32 --frames 16 --size 64

Fields: params_m; train_tflop (forward + backward, torch.utils.flop_counter) and the shares of
convolutions, attention (the two batched matmuls inside attention) and linear layers; a forward
alone is about a third. saved_gib: activations autograd keeps for the backward pass, counted once
per storage, at 2 bytes per element (bf16 autocast; the float32 GroupNorm statistics are
negligible) with fused attention, which keeps q, k, v, the output and one float per query row;
scores_gib: what an attention that materializes its softmax(QK^T) matrices would keep on top.
eager_other_traffic_gib: bytes (bf16) read and written by all non-matmul ops of the step run one
by one as eager PyTorch does (views excluded): divided by the memory bandwidth, a lower bound on
their time that fusion (torch.compile) can cut.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from kinema.models import UNet3D, UNetConfig


MATMUL_OPS = ("convolution", "mm", "bmm", "addmm", "scaled_dot_product", "softmax")


class _Traffic(TorchDispatchMode):
    """Watches every op of a step on ``meta``:

    - the attention probability matrices softmax(QK^T) (B heads L S elements per call; on ``meta``
      SDPA runs its math path, so they appear as softmax outputs): a fused kernel never stores
      them, a non-fused attention keeps them for the backward pass;
    - the elements every other non-view, non-matmul op reads and writes (normalization,
      activations, FiLM, residual adds, layout copies, optimizer-free): in eager mode each is a
      separate pass over memory, the traffic torch.compile's fusion removes most of.
    """

    def __init__(self) -> None:
        super().__init__()
        self.score_elements = 0
        self.score_storages: set[int] = set()
        self.other_elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__
        if "softmax" in name and "backward" not in name:
            self.score_elements += out.numel()
            self.score_storages.add(out.untyped_storage()._cdata)
        if not func.is_view and not any(m in name for m in MATMUL_OPS):
            tensors = [t for t in (*args, *(out if isinstance(out, (tuple, list)) else (out,)))
                       if isinstance(t, torch.Tensor) and t.dtype.is_floating_point]
            self.other_elements += sum(t.numel() for t in tensors)
        return out


def step_cost(cfg: UNetConfig, batch: int, frames: int, size: int) -> dict:
    with torch.device("meta"):
        model = UNet3D(cfg)
        x = torch.empty(batch, cfg.in_channels, frames, size, size)
        logsnr = torch.zeros(batch)
    saved: dict[int, int] = {}
    traffic = _Traffic()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.requires_grad and t.grad_fn is None:  # a parameter, not an activation
            return t
        if t.untyped_storage()._cdata in traffic.score_storages:
            return t  # attention probabilities: counted in scores_gib; fused attention never keeps them
        saved[t.untyped_storage()._cdata] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with traffic:
            out = model(x, logsnr, None)
            out.square().mean().backward()
    flops = defaultdict(int)
    for op, n in counter.get_flop_counts()["Global"].items():
        name = str(op)
        kind = "conv" if "convolution" in name else "attention" if ("bmm" in name or "attention" in name) else "linear"
        flops[kind] += n
    total = sum(flops.values())
    act_elems = sum(saved.values())
    return {"config": f"unet3d-w{cfg.dim}-m{''.join(map(str, cfg.dim_mults))}-{frames}x{size}", "batch": batch,
            "checkpointing": cfg.gradient_checkpointing,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "train_tflop": round(total / 1e12, 3),
            "share": {k: round(v / total, 3) for k, v in sorted(flops.items())},
            "saved_gib": round(2 * act_elems / 2**30, 2), "scores_gib": round(2 * traffic.score_elements / 2**30, 2),
            "eager_other_traffic_gib": round(2 * traffic.other_elements / 2**30, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--mults", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--attn-levels", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per U-Net block")
    args = p.parse_args()
    for width in args.width:
        cfg = UNetConfig(in_channels=3, dim=width, dim_mults=tuple(args.mults), num_res_blocks=args.res_blocks,
                         attn_levels=tuple(args.attn_levels), head_dim=args.head_dim,
                         gradient_checkpointing=args.checkpointing)
        for batch in args.batch:
            print(json.dumps(step_cost(cfg, batch, args.frames, args.size)), flush=True)


if __name__ == "__main__":
    main()
