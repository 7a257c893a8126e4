"""Sets of clips to evaluate: a folder of videos or an ``.npz`` of uint8 clips (samples drawn from
a checkpoint are built in :mod:`kinema.pipelines.evaluate`).

A :class:`ClipSet` yields uint8 clips ``[F, H, W, C]`` of exactly ``frames`` frames (the first
``frames`` of each video; shorter videos are skipped with one warning each) and carries a content
hash, so reference statistics can be cached per set.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from kinema.data.io import VIDEO_EXTENSIONS, VideoDecodeError, read_video
from kinema.metrics.features import hash_files


@dataclass
class ClipSet:
    """``num`` clips from ``source``; ``clips()`` iterates them; ``content_hash`` identifies the data."""

    source: str
    num: int
    frames: int
    content_hash: str
    clips: Callable[[], Iterator[np.ndarray]]


def _name(path: Path, side: str) -> str:
    return f"{side} {path}" if side else str(path)


def npz_clips(path: str | Path, frames: int, num: Optional[int] = None, side: str = "") -> ClipSet:
    """Clips from an ``.npz`` holding one uint8 array ``[N, F, H, W, C]`` or ``[N, F, H, W]`` (key
    ``videos`` when there are several). Read with ``allow_pickle=False``. Errors name the file and
    ``side`` (generated / reference)."""
    path = Path(path).expanduser()
    name = _name(path, side)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            key = "videos" if "videos" in keys else keys[0] if len(keys) == 1 else None
            if key is None:
                raise ValueError(f"{name} holds arrays {keys}; name the clips 'videos'")
            videos = f[key]
    except ValueError as e:
        if str(e).startswith(name):
            raise
        raise ValueError(f"cannot read {name}: {e}") from None  # not an npz, object arrays (pickles), ...
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError: truncated or not a zip
        raise ValueError(f"cannot read {name}: {type(e).__name__}: {e}") from None
    if videos.dtype != np.uint8 or videos.ndim not in (4, 5):
        raise ValueError(f"{name} (array {key!r}) must be uint8 [N, F, H, W, C] or [N, F, H, W], "
                         f"got {videos.dtype} {videos.shape}")
    if videos.ndim == 4:
        videos = videos[..., None]
    if len(videos) == 0:
        raise ValueError(f"{name} holds no clips")
    if videos.shape[1] < frames:
        raise ValueError(f"{name}: clips have {videos.shape[1]} frames, fewer than --frames {frames}")
    videos = videos[: num or len(videos), :frames]
    digest = hashlib.sha256(np.ascontiguousarray(videos).tobytes()).hexdigest()
    return ClipSet(str(path), len(videos), frames, digest, lambda: iter(videos))


def folder_clips(root: str | Path, frames: int, num: Optional[int] = None) -> ClipSet:
    """The first ``frames`` frames of up to ``num`` videos below ``root`` (sorted by path)."""
    from kinema.data.video_folder import find_files

    root = Path(root).expanduser()
    files = find_files(root, VIDEO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found below {root}")
    clips: list[np.ndarray] = []
    used: list[Path] = []
    for p in files:
        if num is not None and len(clips) >= num:
            break
        try:
            video = read_video(p, max_frames=frames)
        except VideoDecodeError as e:
            warnings.warn(f"skipping {p}: {e}")
            continue
        if len(video) < frames:
            warnings.warn(f"skipping {p}: {len(video)} frames, fewer than {frames}")
            continue
        clips.append(video[:frames])
        used.append(p)
    if not clips:
        raise ValueError(f"none of the {len(files)} videos below {root} has {frames} decodable frames")
    shapes = {c.shape for c in clips}
    if len(shapes) > 1:
        raise ValueError(f"videos below {root} differ in size ({sorted(shapes)[:3]}...); resize them to one size")
    return ClipSet(str(root), len(clips), frames, hash_files(used, root), lambda: iter(clips))


def load_clips(path: str | Path, frames: int, num: Optional[int] = None, side: str = "") -> ClipSet:
    """A folder of videos or an ``.npz`` of clips; ``side`` (generated / reference) names it in errors."""
    p = Path(path).expanduser()
    if p.is_dir():
        return folder_clips(p, frames, num)
    if p.suffix == ".npz" and p.is_file():
        return npz_clips(p, frames, num, side=side)
    if not p.exists():
        raise FileNotFoundError(f"{_name(p, side)} does not exist")
    raise ValueError(f"{_name(p, side)}: expected a folder of videos or an .npz of uint8 clips")
