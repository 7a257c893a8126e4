"""The U-Net shape options the benchmark scripts share; defaults are the reference configuration of
DESIGN.md section 6 (16 frames x 64x64, width 64 with multipliers 1 2 4 8) plus width 128."""

from __future__ import annotations

import argparse

from kinema.models import UNetConfig


def add_unet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--mults", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--attn-levels", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=0, help="class-conditional model (0: unconditional)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per U-Net block")


def unet_config(args: argparse.Namespace, width: int) -> UNetConfig:
    return UNetConfig(in_channels=3, dim=width, dim_mults=tuple(args.mults), num_res_blocks=args.res_blocks,
                      attn_levels=tuple(args.attn_levels), head_dim=args.head_dim,
                      gradient_checkpointing=args.checkpointing, num_classes=args.num_classes)
