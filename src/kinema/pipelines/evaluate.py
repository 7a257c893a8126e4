"""``kinema eval``: compare generated clips with reference clips by FVD, FID, PSNR or SSIM.

Each side is a :class:`~kinema.metrics.sources.ClipSet`: a folder of videos, an ``.npz`` of uint8
clips, or (generated side) a checkpoint to sample from. FVD and FID fit Gaussians to the features
of both sides; the reference side's statistics are cached under the cache directory keyed by the
set's content hash and every setting that changes them, so evaluating many checkpoints against
one reference set extracts its features once. PSNR and SSIM pair generated clip i with reference
clip i.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from kinema.data.io import from_uint8, to_uint8
from kinema.metrics.assets import cache_dir, resolve_weights
from kinema.metrics.features import cached_stats, extract_features, preprocess_i3d, preprocess_inception, stats_key
from kinema.metrics.frechet import GaussianStats, frechet_from_stats
from kinema.metrics.i3d import load_i3d, sha256_file
from kinema.metrics.inception import load_inception
from kinema.metrics.similarity import psnr, ssim
from kinema.metrics.sources import ClipSet, load_clips
from kinema.pipelines.sample import sample_videos
from kinema.system import load_system, resolve_device
from kinema.validate import NonFiniteError, require_finite

METRICS = ("fvd", "fid", "psnr", "ssim")


def is_checkpoint(path: str | Path) -> bool:
    """A checkpoint directory (``meta.json``) or a run directory (``ckpt/``)."""
    p = Path(path).expanduser()
    return p.is_dir() and ((p / "meta.json").is_file() or (p / "ckpt").is_dir() or p.name == "ckpt")


def sampled_clips(checkpoint: str | Path, num: int, frames: Optional[int] = None, *, steps: Optional[int] = None,
                  sampler: Optional[str] = None, seed: int = 0, batch_size: int = 16, device: str = "auto",
                  progress: bool = True) -> ClipSet:
    """Draw ``num`` clips from a checkpoint (EMA weights) as uint8 ``[F, H, W, C]``."""
    system, ckpt = load_system(checkpoint, device=device)
    cfg = system.cfg
    try:
        videos = sample_videos(system, num, steps=steps, sampler=sampler, seed=seed, frames=frames,
                               batch_size=batch_size, progress=progress)
    except NonFiniteError as e:
        raise NonFiniteError(f"generated side: sampling from checkpoint {ckpt}: {e}; nothing is scored") from None
    clips = to_uint8(videos)  # [N, F, H, W, C]
    tag = f"{ckpt}:{sampler or cfg.sample.sampler}:{steps or cfg.sample.steps}:{seed}"
    return ClipSet(str(ckpt), len(clips), clips.shape[1], tag, lambda: iter(clips))


def open_generated(path: str | Path, frames: int, num: Optional[int], **sample_kwargs) -> ClipSet:
    """A checkpoint is sampled (``num`` clips, default 16); anything else is read by :func:`load_clips`."""
    if is_checkpoint(path):
        return sampled_clips(path, num or 16, frames, **sample_kwargs)
    return load_clips(path, frames, num, side="generated")


def _frechet(metric: str, generated: ClipSet, reference: ClipSet, weights: Optional[str], cache: Path,
             batch_size: int, device: torch.device, progress: bool) -> tuple[float, dict]:
    if metric == "fvd":
        path = resolve_weights("i3d", weights, cache)
        net, prep, unit = load_i3d(path, device), preprocess_i3d, "clips"
    else:
        if not weights:
            raise FileNotFoundError("FID needs --weights PATH: the TF FID Inception-v3 state dict (.safetensors or .pth)")
        path = Path(weights).expanduser()
        net, prep, unit = load_inception(path, device), preprocess_inception, "frames"

    def features(clips: ClipSet, side: str) -> np.ndarray:
        return extract_features(net, clips.clips(), prep, batch_size=batch_size, total=clips.num,
                                desc=f"{metric} {side} features", progress=progress)

    key = stats_key(metric=metric, data=reference.content_hash, num=reference.num, frames=reference.frames,
                    weights=sha256_file(path))
    ref_stats, cached = cached_stats(cache, key, lambda: features(reference, "reference"))
    gen_features = features(generated, "generated")
    require_finite(gen_features, f"the {metric} features of the generated clips ({generated.source})")
    gen_stats = GaussianStats.from_features(gen_features)
    return frechet_from_stats(gen_stats, ref_stats), {
        "weights": str(path), "reference_stats_cached": cached, "feature_unit": unit,
        "num_features_generated": gen_stats.n, "num_features_reference": ref_stats.n}


def _paired(metric: str, generated: ClipSet, reference: ClipSet) -> tuple[float, dict]:

    n = min(generated.num, reference.num)
    fn = psnr if metric == "psnr" else ssim
    values = []
    for i, (g, r) in enumerate(zip(generated.clips(), reference.clips())):
        if i >= n:
            break
        if g.shape != r.shape:
            raise ValueError(f"{metric}: generated clip {i} has shape {g.shape}, reference {r.shape}; "
                             f"paired metrics need equal shapes")
        values.append(float(fn(from_uint8(g), from_uint8(r))[0]))
    v = np.asarray(values)
    return float(v.mean()), {"pairs": n, "std": float(v.std()) if np.isfinite(v).all() else None}


def evaluate(generated: ClipSet, reference: ClipSet, metric: str = "fvd", *, weights: Optional[str] = None,
             cache: Optional[str | Path] = None, batch_size: int = 8, device: str = "auto",
             progress: bool = True) -> dict:
    """One metric between two clip sets -> a JSON-ready dict (``value`` plus what produced it)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    if metric in ("fvd", "fid"):
        value, extra = _frechet(metric, generated, reference, weights, cache_dir(cache), batch_size, dev, progress)
    else:
        value, extra = _paired(metric, generated, reference)
    if np.isnan(value):  # (inf is a valid PSNR of identical clips)
        raise NonFiniteError(f"{metric} of {generated.source} against {reference.source} is NaN: not a result")
    return {"metric": metric, "value": value, "generated": generated.source, "reference": reference.source,
            "num_generated": generated.num, "num_reference": reference.num, "frames": generated.frames,
            "device": str(dev), "seconds": round(time.perf_counter() - start, 2), **extra}
