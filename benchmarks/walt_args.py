"""The W.A.L.T shape options the benchmark scripts share, and the parameter matching that lets them
compare the transformer and the U-Net at equal size.

Parameter counts come from models built on the ``meta`` device (no memory, milliseconds). A W.A.L.T
block's parameters do not depend on the depth, so params(depth) = fixed + depth * per_block: two meta
builds per hidden size give the depth that matches a target count.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Callable, Optional

import torch
from torch import nn

from kinema.models import UNet3D, UNetConfig, WALT, WALTConfig

PAPER_SHAPE = 24 / 1024  # depth / hidden of the W.A.L.T-like reference (hidden 1024, 24 blocks)


def add_walt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--walt-hidden", type=int, default=None,
                   help="W.A.L.T hidden size (default: matched to each U-Net's parameter count)")
    p.add_argument("--walt-depth", type=int, default=None,
                   help="W.A.L.T blocks, even (default: matched to each U-Net's parameter count)")
    p.add_argument("--walt-head-dim", type=int, default=64, help="W.A.L.T channels per attention head")
    p.add_argument("--walt-patch", type=int, nargs=3, default=[1, 2, 2], metavar=("T", "H", "W"))
    p.add_argument("--walt-spatial-window", type=int, nargs=2, default=[0, 0], metavar=("H", "W"),
                   help="tokens; 0 = the whole frame")
    p.add_argument("--walt-st-window", type=int, nargs=3, default=[0, 4, 4], metavar=("T", "H", "W"),
                   help="spatiotemporal window in tokens; 0 = the whole extent")
    p.add_argument("--walt-adaln-lora-rank", type=int, default=2,
                   help="AdaLN-LoRA rank (0: plain per-block AdaLN, 6 D^2 parameters per block)")
    p.add_argument("--walt-self-condition", action="store_true", help="the 2C-channel self-conditioned input")


def walt_config(args: argparse.Namespace, hidden: int, depth: int, in_channels: int = 3) -> WALTConfig:
    return WALTConfig(in_channels=in_channels, patch_size=tuple(args.walt_patch), hidden_dim=hidden, depth=depth,
                      heads=max(1, hidden // args.walt_head_dim), spatial_window=tuple(args.walt_spatial_window),
                      spatiotemporal_window=tuple(args.walt_st_window), max_frames=max(64, args.frames),
                      num_classes=args.num_classes, adaln_lora_rank=args.walt_adaln_lora_rank,
                      gradient_checkpointing=args.checkpointing, self_condition=args.walt_self_condition)


def param_count(build: Callable[[], nn.Module]) -> int:
    """Parameters of ``build()``, built on the meta device."""
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())


def match_walt_depth(target: int, base: WALTConfig) -> tuple[WALTConfig, int]:
    """The even depth (>= 2) at ``base``'s hidden size whose parameter count is nearest ``target``:
    (config, its parameter count)."""
    two, four = (param_count(lambda d=d: WALT(dataclasses.replace(base, depth=d))) for d in (2, 4))
    per_block = (four - two) / 2
    fixed = two - 2 * per_block
    depth = max(2, 2 * round((target - fixed) / per_block / 2))
    cfg = dataclasses.replace(base, depth=depth)
    return cfg, round(fixed + depth * per_block)


def match_walt(target: int, base: WALTConfig, hidden: Optional[int] = None, head_dim: int = 64,
               tolerance: float = 0.1) -> WALTConfig:
    """A W.A.L.T config with ``target`` +- ``tolerance`` parameters. With ``hidden`` given only the depth
    is chosen; otherwise hidden sizes 64, 128, ... 2048 are tried and, among those within tolerance,
    the one whose depth / hidden is nearest the paper-like shape (:data:`PAPER_SHAPE`) wins. Raises
    when nothing is within tolerance (naming the nearest count)."""
    hiddens = [hidden] if hidden else range(head_dim, 2049, head_dim)
    found = []
    for h in hiddens:
        cfg, n = match_walt_depth(target, dataclasses.replace(base, hidden_dim=h, heads=max(1, h // head_dim)))
        found.append((abs(n - target) / target, cfg))
    ok = [(abs(c.depth / c.hidden_dim - PAPER_SHAPE), c) for err, c in found if err <= tolerance]
    if not ok:
        err, cfg = min(found, key=lambda f: f[0])
        raise ValueError(f"no W.A.L.T config within {tolerance:.0%} of {target / 1e6:.2f} M parameters; nearest: "
                         f"hidden {cfg.hidden_dim} depth {cfg.depth}, off by {err:.1%}")
    return min(ok, key=lambda o: o[0])[1]


def match_unet_width(target: int, build: Callable[[int], UNetConfig], step: int = 4,
                     tolerance: float = 0.1) -> UNetConfig:
    """The U-Net config ``build(width)`` (width a multiple of ``step``; widths whose config is invalid,
    e.g. channels that do not split into heads, are skipped) whose parameter count is nearest
    ``target``; raises when it is off by more than ``tolerance``."""
    best = None
    for width in range(step, 2049, step):
        try:
            cfg = build(width)
        except ValueError:  # e.g. channels that do not split into heads of head_dim
            continue
        n = param_count(lambda: UNet3D(cfg))
        err = abs(n - target) / target
        if best is None or err < best[0]:
            best = (err, cfg)
        if n > target:
            break
    if best[0] > tolerance:
        raise ValueError(f"no U-Net width (multiples of {step}) within {tolerance:.0%} of {target / 1e6:.2f} M "
                         f"parameters; nearest: width {best[1].dim}, off by {best[0]:.1%}")
    return best[1]


def walt_name(cfg: WALTConfig, frames: int, size: int) -> str:
    return (f"walt-d{cfg.hidden_dim}x{cfg.depth}-p{''.join(map(str, cfg.patch_size))}"
            f"-st{''.join(map(str, cfg.spatiotemporal_window))}-{frames}x{size}")
