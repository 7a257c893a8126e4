"""Training and denoising throughput of kinema's backbones; prints one JSON line per measurement.

    python benchmarks/throughput.py                      # widths 64 and 128, batches 8 16 32, on CUDA
    python benchmarks/throughput.py --width 64 --mode train --compile --channels-last
    python benchmarks/throughput.py --tiny               # a tiny size that runs on CPU in seconds
    python benchmarks/throughput.py --mode train --optimizer adamw muon --width 64 --batch 8   # the step with each
    python benchmarks/throughput.py --backbone unet walt --width 128 --batch 8   # W.A.L.T at the U-Net's size
    python benchmarks/throughput.py --backbone walt --walt-hidden 1024 --walt-depth 24 --batch 8

Backbones (``--backbone``, default both): the VDM U-Net (``unet``) of each ``--width``, and the
W.A.L.T transformer (``walt``) either as given (``--walt-hidden`` and ``--walt-depth``) or matched to
that U-Net's parameter count within 10 % (``walt_args.match_walt``: with ``--walt-hidden`` only the
depth is chosen, else hidden and depth, nearest the paper's depth/hidden shape); its rows say
``matched_to``. Both take the same z ``[B, 3, frames, size, size]``.

Modes: train = the trainer's step (v-loss, backward, gradient clipping, fused AdamW on CUDA or
``--optimizer muon``, EMA update); denoise = one network evaluation under inference_mode; guided = one
classifier-free-guided evaluation (conditional and unconditional halves batched into one forward of 2B videos, then
mixed), what each sampling step costs with guidance. Options --compile, --channels-last (U-Net only),
--checkpointing (activation checkpointing per block, both backbones) and --attention (the SDPA kernel:
auto, flash, efficient, math) make their effect measurable.

Fields: config, batch, mode, videos_per_s (per step; for denoise / guided: videos denoised by one
step per second), step_ms (median after warm-up, synchronized), flops_per_step
(torch.utils.flop_counter), tflops (achieved), mfu (against the bf16 - or, on CPU, fp32 - matmul
rate measured in this same run), peak_mem_gib (CUDA allocator peak; on CPU the process's peak
resident memory, which includes everything run before), params_m, device, precision and the
options. A batch that runs out of memory prints {"oom": true}.

The reference configuration (DESIGN.md section 6): unconditional, 16 frames x 64x64, U-Net width 64
with multipliers 1, 2, 4, 8, bf16, AdamW.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from kinema.conditioning import Conditioning, drop_conditioning
from kinema.diffusion.guidance import guided_denoiser
from kinema.diffusion.objective import Denoiser, diffusion_loss
from kinema.models import UNet3D, WALT
from kinema.train.ema import EMA
from kinema.train.optim import Muon
from unet_args import add_unet_args, unet_config
from walt_args import add_walt_args, match_walt, walt_config, walt_name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 20) -> float:
    """Achieved dense matmul rate in FLOP/s (the denominator of MFU), measured here and now."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def measure(fn, device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sdpa_backend(name: str):
    """A context selecting the ``F.scaled_dot_product_attention`` kernel (``auto``: PyTorch's choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}[name])


def backbones(args, width: int) -> list[tuple[str, object, dict]]:
    """(backbone, config, extra fields) to measure for the U-Net of ``width``: the U-Net and / or W.A.L.T
    (fixed, or matched to the U-Net's parameter count)."""
    unet = unet_config(args, width)
    out = [("unet3d", unet, {})] if "unet" in args.backbone else []
    if "walt" in args.backbone:
        fixed = args.walt_hidden is not None and args.walt_depth is not None
        base = walt_config(args, args.walt_hidden or 64, args.walt_depth or 2)
        if fixed:
            out.append(("walt", base, {}))
        else:
            target = sum(p.numel() for p in UNet3D(unet).parameters())
            matched = match_walt(target, base, args.walt_hidden, args.walt_head_dim)
            out.append(("walt", matched, {"matched_to": f"unet3d-w{width}"}))
    return out


def run_one(args, backbone: str, cfg, batch: int, mode: str, device: torch.device, peak: float,
            optimizer: str = "adamw") -> dict:
    torch.manual_seed(0)
    model = (UNet3D(cfg) if backbone == "unet3d" else WALT(cfg)).to(device)
    channels_last = args.channels_last and backbone == "unet3d"
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = torch.compile(model) if args.compile else model
    amp = torch.bfloat16 if (device.type == "cuda" and args.precision == "bf16") else None
    x = torch.randn(batch, 3, args.frames, args.size, args.size, device=device).clamp(-1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    if optimizer == "muon":  # Muon on the weight matrices, AdamW on the rest (kinema.train.optim)
        opt = Muon.for_module(model, 1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ema = EMA(model, 0.999)
    logsnr = torch.zeros(batch, device=device)
    labels = torch.arange(batch, device=device) % max(args.num_classes, 1)
    cond = Conditioning(class_labels=labels) if args.num_classes else Conditioning()
    guided = guided_denoiser(Denoiser(net, "v"), cond, drop_conditioning(cond), w=3.0)

    def autocast():
        return torch.autocast(device.type, dtype=amp) if amp is not None else torch.autocast(device.type, enabled=False)

    def train_step(network=net, update=True):
        with autocast():
            loss = diffusion_loss(network, x, cond).loss
        loss.backward()
        if update:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model, 1000)
        opt.zero_grad(set_to_none=True)

    def denoise_step(network=net):
        with torch.inference_mode(), autocast():
            network(x, logsnr, cond)

    def guided_step(network=net):
        with torch.inference_mode(), autocast():
            guided(x, logsnr)

    fn = {"train": train_step, "denoise": denoise_step, "guided": guided_step}[mode]
    with FlopCounterMode(display=False) as counter:  # the eager model: FLOPs are the same compiled or not
        if mode == "guided":
            with torch.inference_mode(), autocast():
                guided_denoiser(Denoiser(model, "v"), cond, drop_conditioning(cond), w=3.0)(x, logsnr)
        else:
            fn(model, update=False) if mode == "train" else fn(model)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with sdpa_backend(args.attention):
        seconds = measure(fn, device, args.steps, args.warmup)
    peak_mem = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()) / 2**30
    achieved = flops / seconds
    name = (f"unet3d-w{cfg.dim}-m{''.join(map(str, args.mults))}-{args.frames}x{args.size}" if backbone == "unet3d"
            else walt_name(cfg, args.frames, args.size))
    return {
        "backbone": backbone, "config": name,
        "mode": mode, "batch": batch, "videos_per_s": round(batch / seconds, 2), "step_ms": round(1e3 * seconds, 2),
        "flops_per_step": flops, "tflops": float(f"{achieved / 1e12:.4g}"), "mfu": float(f"{achieved / peak:.4g}"),
        "peak_mem_gib": round(peak_mem, 2),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16" if amp is not None else "fp32", "compile": args.compile, "channels_last": channels_last,
        "optimizer": optimizer if mode == "train" else None,
        "checkpointing": args.checkpointing, "attention": args.attention,
    }


def peak_rss() -> float:
    """Peak resident memory of this process in bytes (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(rss if sys.platform == "darwin" else rss * 1024)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny sizes for a CPU check")
    add_unet_args(p)
    add_walt_args(p)
    p.add_argument("--backbone", nargs="+", choices=["unet", "walt"], default=["unet", "walt"])
    p.add_argument("--attention", choices=["auto", "flash", "efficient", "math"], default="auto",
                   help="the scaled_dot_product_attention kernel (auto: PyTorch picks a fused one when it can)")
    p.add_argument("--mode", nargs="+", choices=["train", "denoise", "guided"], default=["train", "denoise", "guided"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--optimizer", nargs="+", choices=["adamw", "muon"], default=["adamw"],
                   help="the train step's optimizer (train.optimizer); several: one row each")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.tiny:
        args.width, args.batch, args.frames, args.size = [8], [2], 4, 16
        args.mults, args.attn_levels, args.res_blocks, args.head_dim = [1, 2], [1], 1, 8
        args.walt_head_dim, args.walt_st_window = 8, [2, 4, 4]
        args.steps, args.warmup = 3, 1
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        peak = matmul_peak(device, torch.bfloat16 if args.precision == "bf16" else torch.float32, 8192)
    else:
        peak = matmul_peak(device, torch.float32, 512 if args.tiny else 2048, reps=5)
    print(json.dumps({"matmul_peak_tflops": round(peak / 1e12, 2), "device": str(device),
                      "dtype": args.precision if device.type == "cuda" else "fp32"}), flush=True)
    modes = args.mode
    for width in args.width:
        for backbone, cfg, extra in backbones(args, width):
            for batch in args.batch:
                for mode, optimizer in [(m, o) for m in modes for o in (args.optimizer if m == "train" else ["adamw"])]:
                    try:
                        row = {**run_one(args, backbone, cfg, batch, mode, device, peak, optimizer), **extra}
                    except torch.cuda.OutOfMemoryError:
                        row = {"backbone": backbone, "mode": mode, "batch": batch, "oom": True, **extra}
                        torch.cuda.empty_cache()
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
