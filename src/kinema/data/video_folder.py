"""Datasets over a folder of the user's own videos (or images).

:class:`VideoFolder` finds every video below ``root``, probes each once at construction, and
yields one random clip per file per epoch. :class:`ImageFolder` does the same for images, as
1-frame videos (for joint image-video training).

Bad files never stop a run: a file that cannot be opened or decoded, or that is too short for
one clip, is skipped with ONE warning naming it and recorded in ``dataset.skipped`` as
``(path, reason)``. Only when nothing usable remains is a ``ValueError`` raised, naming the
folder and why each file was skipped. Clips are never looped or padded to reach
``num_frames``.

Captions come from a manifest (``.csv`` with columns ``path,caption`` or ``.jsonl`` with keys
``path``, ``caption``; paths relative to ``root`` or absolute) or else from a sidecar ``.txt``
with the same stem next to the file; otherwise the caption is ``""``.

Randomness (which clip, which crop) is a pure function of ``(seed, index, epoch)``; call
:meth:`set_epoch` once per pass (the loader in :mod:`kinema.data.loader` does).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kinema.data.io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoDecodeError, probe_video, read_frames

logger = logging.getLogger("kinema.data")

CROPS = ("center", "random")


def find_files(root: Path, extensions) -> list[Path]:
    """Files below ``root`` (recursive) whose suffix is in ``extensions`` (case-insensitive),
    sorted by relative path. Hidden files and folders (leading ``.``) are ignored."""
    exts = {e.lower() for e in extensions}
    out = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() in exts and p.is_file():
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def read_manifest(path, root: Path) -> dict[Path, str]:
    """Captions from a ``.csv`` (header with ``path`` and ``caption``) or ``.jsonl`` manifest ->
    ``{resolved path: caption}``. Relative paths are taken relative to ``root``."""
    path = Path(path).expanduser()
    if not path.is_absolute() and not path.exists():
        path = root / path
    if not path.exists():
        raise FileNotFoundError(f"caption manifest {path} does not exist")
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"manifest {path} needs a header with columns 'path' and 'caption', "
                                 f"got {reader.fieldnames}")
            rows = list(reader)
    elif path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or "path" not in row or "caption" not in row:
                    raise ValueError(f"manifest {path} line {n}: expected an object with 'path' and 'caption'")
                rows.append(row)
    else:
        raise ValueError(f"manifest {path}: unknown format {path.suffix!r}; use .csv or .jsonl")
    out = {}
    for row in rows:
        p = Path(row["path"]).expanduser()
        p = p if p.is_absolute() else root / p
        out[p.resolve()] = str(row["caption"] or "")
    return out


def resize_crop(frames: torch.Tensor, size: int, crop: str, rng: np.random.Generator) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> float32 ``[3, F, size, size]`` in [-1, 1]: resize the shorter
    side to ``size`` (bilinear, antialiased), then a center or random ``size x size`` crop."""
    x = frames.permute(0, 3, 1, 2).float()  # [F, 3, H, W]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)
    if crop == "random":
        top, left = int(rng.integers(nh - size + 1)), int(rng.integers(nw - size + 1))
    else:
        top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()  # [3, F, size, size]


class _FolderBase(Dataset):
    """Shared file discovery, captions, skip bookkeeping and epoch handling."""

    kind = "files"
    extensions: tuple = ()
    MAX_FALLBACKS = 8

    def __init__(self, root, size: int, crop: str, captions: bool, manifest, seed: int) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ValueError(f"{type(self).__name__}: {self.root} is not a folder")
        if crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size, self.crop, self.seed, self.epoch = size, crop, seed, 0
        self.captions_enabled = captions
        self.manifest = read_manifest(manifest, self.root) if (manifest and captions) else {}
        self.skipped: list[tuple[str, str]] = []
        self._warned: set[tuple[int, str]] = set()  # one load-time warning per file and kind
        self.files: list[Path] = []
        self.captions: list[str] = []

    def _skip(self, path: Path, reason: str) -> None:
        self.skipped.append((str(path), reason))
        warnings.warn(f"skipping {path}: {reason}", stacklevel=4)  # -> the caller of __init__

    def _caption(self, path: Path) -> str:
        if not self.captions_enabled:
            return ""
        key = path.resolve()
        if key in self.manifest:
            return self.manifest[key]
        sidecar = path.with_suffix(".txt")
        if sidecar.exists():
            return sidecar.read_text(encoding="utf-8", errors="replace").strip()
        return ""

    def _build_index(self) -> None:
        """Probe every file under ``root`` once (``_index_file``), then check something is usable."""
        found = find_files(self.root, self.extensions)
        for path in found:
            self._index_file(path)
        self._finish_index(len(found))

    def _finish_index(self, found: int) -> None:
        if self.manifest:
            have = {p.resolve() for p in self.files} | {Path(s).resolve() for s, _ in self.skipped}
            missing = [p for p in self.manifest if p not in have]
            if missing:
                warnings.warn(f"{len(missing)} manifest entries name no {self.kind[:-1]} found under {self.root} "
                              f"(first: {missing[0]})", stacklevel=3)
        if not self.files:
            if found == 0:
                raise ValueError(f"no {self.kind} in {self.root} (looked for {', '.join(self.extensions)}, "
                                 f"case-insensitive, recursively)")
            reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in self.skipped[:5])
            more = f"; ... and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            raise ValueError(f"no usable {self.kind} in {self.root}: all {found} found were skipped: "
                             f"{reasons}{more}")
        logger.info("%s(%s): %d %s, %d skipped", type(self).__name__, self.root, len(self.files), self.kind,
                    len(self.skipped))

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Clip and crop choices are a function of (seed, index, epoch)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, self.epoch])

    def __getitem__(self, index: int) -> dict:
        """Item ``index``. If its file fails to decode now (it probed fine), a warning names it
        and the next file's item is returned instead (at most ``MAX_FALLBACKS`` tries)."""
        index = self._check_index(index)
        tries = min(self.MAX_FALLBACKS, len(self.files))
        for k in range(tries):
            i = (index + k) % len(self.files)
            try:
                return self._load(i)
            except VideoDecodeError as e:
                if (i, "error") not in self._warned:
                    self._warned.add((i, "error"))
                    warnings.warn(f"skipping {self.files[i]} at load time: {e}", stacklevel=2)
                error = e
        what = f"all {tries} {self.kind}" if tries == len(self.files) else f"{tries} consecutive {self.kind}"
        raise VideoDecodeError(f"{what} tried from index {index} failed to decode (last: {error})")

    def _load(self, index: int) -> dict:
        raise NotImplementedError

    def metadata(self, index: int) -> dict:
        """Item ``index``'s fields other than ``"video"`` (caption and path), without decoding it."""
        index = self._check_index(index)
        return {"caption": self.captions[index], "path": str(self.files[index])}

    def _check_index(self, index: int) -> int:
        n = len(self.files)
        index = int(index) + (n if index < 0 else 0)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {type(self).__name__} of {n} {self.kind}")
        return index


class VideoFolder(_FolderBase):
    """Random clips from every video below ``root`` (.mp4 .webm .mkv .avi .mov .gif, any case).

    Each item is one clip of ``num_frames`` frames from file ``index``: consecutive clip frames
    are ``frame_stride`` source frames apart, or, when ``fps`` is given, the source is resampled
    to ``fps`` (nearest frame; needs the file's frame rate). The clip start is uniform over the
    valid range. Frames are resized so the shorter side is ``size`` and cropped (center or
    random) to ``size x size``. Files shorter than one clip are skipped (never looped).

    Item: ``{"video": float32 [3, num_frames, size, size] in [-1, 1], "caption": str, "path": str}``.
    ``self.skipped`` lists ``(path, reason)`` for every file left out.
    """

    kind = "videos"
    extensions = VIDEO_EXTENSIONS

    def __init__(self, root, num_frames: int, size: int, frame_stride: int = 1, fps: Optional[float] = None,
                 crop: str = "center", captions: bool = True, manifest=None, seed: int = 0) -> None:
        super().__init__(root, size, crop, captions, manifest, seed)
        if num_frames < 1 or frame_stride < 1:
            raise ValueError(f"num_frames and frame_stride must be >= 1, got num_frames={num_frames}, "
                             f"frame_stride={frame_stride}")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.num_frames, self.frame_stride, self.fps = num_frames, frame_stride, fps
        self.lengths: list[int] = []
        self.src_fps: list[Optional[float]] = []
        self._build_index()

    def _index_file(self, path: Path) -> None:
        try:
            info = probe_video(path)
        except VideoDecodeError as e:
            self._skip(path, f"unreadable ({_short(e, path)})")
            return
        if self.fps is not None and not info.fps:
            self._skip(path, f"frame rate unknown, cannot resample to fps={self.fps}")
            return
        need = self.span(info.fps)
        if info.num_frames < need:
            self._skip(path, f"too short: a clip needs {need} frames ({self._clip_desc()}), "
                             f"the file has {info.num_frames}")
            return
        self.files.append(path)
        self.lengths.append(info.num_frames)
        self.src_fps.append(info.fps)
        self.captions.append(self._caption(path))

    def _clip_desc(self) -> str:
        if self.fps is not None:
            return f"num_frames={self.num_frames} at fps={self.fps}"
        return f"num_frames={self.num_frames}, frame_stride={self.frame_stride}"

    def step(self, src_fps: Optional[float]) -> float:
        """Source frames between consecutive clip frames."""
        return src_fps / self.fps if self.fps is not None else float(self.frame_stride)

    def offsets(self, src_fps: Optional[float]) -> np.ndarray:
        """Source-frame offsets of the clip frames from the clip start ``[num_frames]``."""
        return np.rint(np.arange(self.num_frames) * self.step(src_fps) + 1e-9).astype(np.int64)

    def span(self, src_fps: Optional[float]) -> int:
        """Source frames one clip covers."""
        return int(self.offsets(src_fps)[-1]) + 1

    def clip_indices(self, index: int, num_source_frames: Optional[int] = None) -> np.ndarray:
        """Source frame indices of item ``index``'s clip at the current epoch ``[num_frames]``."""
        index = self._check_index(index)
        n = self.lengths[index] if num_source_frames is None else num_source_frames
        offsets = self.offsets(self.src_fps[index])
        rng = self._rng(index)
        start = int(rng.integers(max(n - int(offsets[-1]), 1)))
        return start + offsets

    def _load(self, index: int) -> dict:
        path = self.files[index]
        indices = self.clip_indices(index)
        frames, seen = read_frames(path, indices, fps=self.src_fps[index])
        if len(frames) < len(indices):
            # The stored / estimated frame count was too high: choose again within what decoded.
            frames = self._reread_short(index, path, seen)
        rng = self._rng(index)
        rng.integers(2)  # keep crop draws independent of the clip draw
        video = resize_crop(torch.from_numpy(frames), self.size, self.crop, rng)
        return {"video": video, "caption": self.captions[index], "path": str(path)}

    def _reread_short(self, index: int, path: Path, seen: int) -> np.ndarray:
        indices = self.clip_indices(index, num_source_frames=seen)
        indices = np.minimum(indices, seen - 1)
        if (index, "short") not in self._warned:
            self._warned.add((index, "short"))
            warnings.warn(f"{path}: decoded only {seen} frames (expected {self.lengths[index]}); "
                          f"{'repeating the last frame' if seen < self.span(self.src_fps[index]) else 'clip re-drawn'}",
                          stacklevel=3)
        frames, _ = read_frames(path, indices, fps=None)
        if len(frames) < len(indices):
            raise VideoDecodeError(f"{path}: could not decode frames {indices.tolist()}")
        return frames


class ImageFolder(_FolderBase):
    """Every image below ``root`` (.png .jpg .jpeg .webp .bmp, any case) as a 1-frame video.

    Resized so the shorter side is ``size``, then center or random cropped. Captions as for
    :class:`VideoFolder`. Item: ``{"video": float32 [3, 1, size, size] in [-1, 1], "caption", "path"}``.
    """

    kind = "images"
    extensions = IMAGE_EXTENSIONS

    def __init__(self, root, size: int, crop: str = "center", captions: bool = True, manifest=None,
                 seed: int = 0) -> None:
        super().__init__(root, size, crop, captions, manifest, seed)
        self._build_index()

    def _index_file(self, path: Path) -> None:
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as e:
            self._skip(path, f"unreadable ({_short(e, path)})")
            return
        self.files.append(path)
        self.captions.append(self._caption(path))

    def load(self, index: int) -> np.ndarray:
        """uint8 ``[1, H, W, 3]`` pixels of image ``index``."""
        from PIL import Image

        path = self.files[self._check_index(index)]
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))[None]
        except Exception as e:
            raise VideoDecodeError(f"cannot read image {path}: {_short(e, path)}") from e

    def _load(self, index: int) -> dict:
        video = resize_crop(torch.from_numpy(self.load(index)), self.size, self.crop,
                            self._rng(index))
        return {"video": video, "caption": self.captions[index], "path": str(self.files[index])}


def _short(error: Exception, path: Path) -> str:
    """The error's message (its cause's, when it wraps one) without the path, on one line."""
    msg = str(error.__cause__ or error)
    for s in (f": '{path}'", f"'{path}'", str(path)):
        msg = msg.replace(s, "")
    msg = re.sub(r"^\[Errno -?\d+\]\s*", "", " ".join(msg.split())).strip(" :")
    return (msg or type(error).__name__)[:200]


__all__ = ["VideoFolder", "ImageFolder", "find_files", "read_manifest", "resize_crop"]
