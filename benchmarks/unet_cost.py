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
their time that fusion (torch.compile) can cut. of_which_copies_gib: the part that only changes
memory layout (copy_ / clone: transposes between the '(b f) c h w' and 'b c f h w' views, token
layouts for attention, contiguous() before a convolution); --channels-last shows how much of it
channels_last_3d activations remove.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from kinema.models import UNet3D, UNetConfig
from unet_args import add_unet_args, unet_config


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
        self.copy_elements = 0

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
            if name.split(".")[0] in ("copy_", "clone", "_to_copy"):
                self.copy_elements += sum(t.numel() for t in tensors)
        return out


def step_cost(cfg: UNetConfig, batch: int, frames: int, size: int, channels_last: bool = False) -> dict:
    """The cost of one U-Net training step (see the module docstring)."""
    name = f"unet3d-w{cfg.dim}-m{''.join(map(str, cfg.dim_mults))}-{frames}x{size}"
    return model_step_cost(lambda: UNet3D(cfg), name, cfg.in_channels, batch, frames, size,
                           cfg.gradient_checkpointing, channels_last)


def model_step_cost(build, config: str, in_channels: int, batch: int, frames: int, size: int,
                    checkpointing: bool, channels_last: bool = False) -> dict:
    """The cost of one training step of any backbone ``build()`` (``net(z, logsnr, cond)``) on
    ``[batch, in_channels, frames, size, size]`` inputs, run on the meta device."""
    with torch.device("meta"):
        model = build()
        x = torch.empty(batch, in_channels, frames, size, size)
        logsnr = torch.zeros(batch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
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
    return {"config": config, "batch": batch, "checkpointing": checkpointing, "channels_last": channels_last,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "train_tflop": round(total / 1e12, 3),
            "share": {k: round(v / total, 3) for k, v in sorted(flops.items())},
            "saved_gib": round(2 * act_elems / 2**30, 2), "scores_gib": round(2 * traffic.score_elements / 2**30, 2),
            "eager_other_traffic_gib": round(2 * traffic.other_elements / 2**30, 1),
            "of_which_copies_gib": round(2 * traffic.copy_elements / 2**30, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_unet_args(p)
    p.add_argument("--channels-last", action="store_true", help="channels_last_3d weights and activations")
    args = p.parse_args()
    for width in args.width:
        cfg = unet_config(args, width)
        for batch in args.batch:
            print(json.dumps(step_cost(cfg, batch, args.frames, args.size, args.channels_last)), flush=True)


if __name__ == "__main__":
    main()
