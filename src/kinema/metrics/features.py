"""Feature extraction for FVD and FID, and reference statistics cached per reference set.

Standard preprocessing (DESIGN.md section 8):

- FVD (Unterthiner et al. 2018): every frame resized to 224x224 (bilinear, no antialiasing, as
  ``tf.image.resize_bilinear``), values scaled to [-1, 1]; the I3D logits ``[N, 400]`` are the features.
- FID (Heusel et al. 2017), frame level: every frame resized to 299x299 (bilinear), scaled to
  [-1, 1]; Inception-v3 pool features ``[N_frames, 2048]``.

Clips are uint8 ``[F, H, W, C]`` (C = 1 or 3; grayscale is repeated to RGB). Extraction runs in
batches under ``torch.inference_mode`` on the network's device, with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from einops import rearrange
from torch import Tensor, nn
from tqdm.auto import tqdm

from kinema.metrics.frechet import GaussianStats
from kinema.resize import resize_frames

I3D_SIZE = 224
INCEPTION_SIZE = 299


def to_rgb_float(images: Tensor) -> Tensor:
    """uint8 ``[..., H, W, C]`` (C = 1 or 3) -> float ``[..., 3, H, W]`` in [-1, 1]."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 pixels, got dtype {images.dtype}")
    c = images.shape[-1]
    if c not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels (last axis), got {c} in shape {tuple(images.shape)}")
    x = images.movedim(-1, -3).float() / 127.5 - 1.0
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]) if c == 1 else x


def preprocess_i3d(clips: Tensor, size: int = I3D_SIZE) -> Tensor:
    """uint8 clips ``[B, F, H, W, C]`` -> I3D input ``[B, 3, F, size, size]`` in [-1, 1]."""
    b = clips.shape[0]
    frames = resize_frames(to_rgb_float(rearrange(clips, "b f h w c -> (b f) h w c")), size, antialias=False)
    return rearrange(frames, "(b f) c h w -> b c f h w", b=b)


def preprocess_inception(clips: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    """uint8 clips ``[B, F, H, W, C]`` -> Inception input, one image per frame ``[B*F, 3, size, size]``."""
    return resize_frames(to_rgb_float(rearrange(clips, "b f h w c -> (b f) h w c")), size, antialias=False)


def _batches(clips: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    batch: list[np.ndarray] = []
    for clip in clips:
        batch.append(np.asarray(clip))
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


@torch.inference_mode()
def extract_features(net: nn.Module, clips: Iterable[np.ndarray], preprocess: Callable[[Tensor], Tensor], *,
                     batch_size: int = 8, total: Optional[int] = None, desc: str = "features",
                     progress: bool = True) -> np.ndarray:
    """Run ``net(preprocess(batch))`` over uint8 clips ``[F, H, W, C]`` in batches -> features ``[N, D]``
    (float64 numpy). ``net`` decides the device; shapes within one set must agree."""
    device = next(net.parameters()).device
    feats = []
    bar = tqdm(total=total, desc=desc, unit="clip", disable=not progress, leave=False)
    for batch in _batches(clips, batch_size):
        x = preprocess(torch.from_numpy(batch)).to(device)
        feats.append(net(x).double().cpu())
        bar.update(len(batch))
    bar.close()
    if not feats:
        raise ValueError("no clips to extract features from")
    return torch.cat(feats).numpy()


def hash_files(paths: Iterable[Path], root: Optional[Path] = None) -> str:
    """sha256 over the (relative) names and bytes of ``paths``, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p.relative_to(root) if root else p.name).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def stats_key(**settings) -> str:
    """Cache key: sha256 of the JSON of ``settings`` (content hash of the set, metric, frames, ...)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_stats(cache: Optional[Path], key: str, compute: Callable[[], np.ndarray]) -> tuple[GaussianStats, bool]:
    """Fitted :class:`GaussianStats` for ``key`` from ``cache/stats/<key>.npz`` when present, else
    from ``compute()`` (features ``[N, D]``), saved there. Returns ``(stats, was_cached)``."""
    path = cache / "stats" / f"{key}.npz" if cache is not None else None
    if path is not None and path.is_file():
        return GaussianStats.load(path), True
    stats = GaussianStats.from_features(compute())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        stats.save(tmp)
        tmp.replace(path)
    return stats, False
