"""Peak memory of encoding and decoding a long video with a frame-wise (image) autoencoder; one JSON line per case.

    OMP_NUM_THREADS=1 python benchmarks/ae_memory.py                  # 32 and 256 frames of 256^2, both autoencoders
    python benchmarks/ae_memory.py --frames 32 256 --size 256 --chunk 8 --one-pass 32

Video LDM (Blattmann et al. 2023) encodes every frame with an image autoencoder; kinema runs the
frames ``chunk`` at a time (kinema's ``CausalAE`` with ``temporal_factor`` 1: ``chunk_frames`` latent
frames; the diffusers ``AutoencoderKL`` adapter, ``models/vae_adapter.py``: ``chunk_frames`` images), so
the activations held at once are one chunk's, whatever the length. Each case (autoencoder x frames)
runs in its own process: build the autoencoder (random weights; the diffusers one is saved with
``save_pretrained`` and loaded back through kinema's adapter), measure the baseline, then encode a
``[1, 3, F, size, size]`` video and decode its latents.

Fields: ``ae``, ``frames``, ``size``, ``chunk`` (0: one pass), ``device``; ``baseline_mb`` (memory before
the video exists: on CPU the resident set, on CUDA the allocated bytes), ``peak_mb`` (CPU: the process's
peak resident set, ``resource.getrusage``; CUDA: ``torch.cuda.max_memory_allocated``), ``tensors_mb``
(the input video + latents + decoded video themselves) and ``overhead_mb = peak - baseline - tensors``:
what the autoencoder held on top of its inputs and outputs (activations, temporaries). Bounded memory
means ``overhead_mb`` does not grow with ``frames``. The last line compares the largest and smallest
frame counts per autoencoder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def build(ae: str, chunk: int, width: int):
    if ae == "causal_ae":
        from kinema.models.autoencoder import CausalAE, CausalAEConfig

        return CausalAE(CausalAEConfig(latent_channels=4, width=width, num_res_blocks=1, spatial_factor=8,
                                       temporal_factor=1, norm_groups=8, chunk_frames=chunk)).eval()
    from diffusers import AutoencoderKL

    from kinema.models.vae_adapter import load_diffusers_vae

    vae = AutoencoderKL(block_out_channels=(width, 2 * width, 2 * width, 2 * width), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=8, sample_size=256)
    folder = tempfile.mkdtemp(prefix="ae_memory_vae_")
    vae.save_pretrained(folder)
    return load_diffusers_vae(folder, chunk_frames=chunk)


def run_case(ae_name: str, frames: int, size: int, chunk: int, width: int) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ae = build(ae_name, chunk, width).to(device)
    with torch.no_grad():  # warm up kernels / allocator on 1 frame
        ae.decode(ae.encode(torch.zeros(1, 3, 1, size, size, device=device)))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2 ** 20
    else:
        baseline = rss_now_mb()
    start = time.time()
    video = torch.rand(1, 3, frames, size, size, device=device).mul_(2).sub_(1)  # in place: one video-sized tensor
    with torch.no_grad():
        z = ae.encode(video)
        out = ae.decode(z)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = rss_peak_mb()
    tensors = sum(t.numel() * t.element_size() for t in (video, z, out)) / 2 ** 20
    return {"ae": ae_name, "frames": frames, "size": size, "chunk": chunk, "width": width, "device": device.type,
            "latent_shape": list(z.shape), "baseline_mb": round(baseline, 1), "peak_mb": round(peak, 1),
            "tensors_mb": round(tensors, 1), "overhead_mb": round(peak - baseline - tensors, 1),
            "seconds": round(time.time() - start, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ae", nargs="+", default=["causal_ae", "diffusers"], choices=["causal_ae", "diffusers"])
    p.add_argument("--frames", nargs="+", type=int, default=[32, 256])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--chunk", type=int, default=8, help="frames per encoder / decoder call (0: one pass)")
    p.add_argument("--width", type=int, default=16, help="channels at full resolution (small: CPU-sized)")
    p.add_argument("--one-pass", nargs="*", type=int, default=[], metavar="F",
                   help="also run these frame counts in one pass (chunk 0), for contrast")
    p.add_argument("--case", nargs=2, metavar=("AE", "FRAMES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:  # the child process: one measurement
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.size, args.chunk, args.width)), flush=True)
        return
    rows = []
    cases = [(ae, f, args.chunk) for ae in args.ae for f in args.frames]
    cases += [(ae, f, 0) for ae in args.ae for f in args.one_pass]
    for ae, frames, chunk in cases:
        cmd = [sys.executable, __file__, "--case", ae, str(frames), "--size", str(args.size), "--chunk", str(chunk),
               "--width", str(args.width)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            row = {"ae": ae, "frames": frames, "chunk": chunk, "error": done.stderr.strip().splitlines()[-1:]}
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    for ae in args.ae:
        mine = sorted((r for r in rows if r["ae"] == ae and r.get("chunk") == args.chunk and "peak_mb" in r),
                      key=lambda r: r["frames"])
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            print(json.dumps({"ae": ae, "frames": [lo["frames"], hi["frames"]],
                              "peak_growth_mb": round(hi["peak_mb"] - lo["peak_mb"], 1),
                              "tensors_growth_mb": round(hi["tensors_mb"] - lo["tensors_mb"], 1),
                              "overhead_growth_mb": round(hi["overhead_mb"] - lo["overhead_mb"], 1)}), flush=True)


if __name__ == "__main__":
    main()
