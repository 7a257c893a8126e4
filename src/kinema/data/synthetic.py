"""Datasets that ship with kinema and need no download.

Both are deterministic per index: item ``i`` is drawn from ``numpy.random.default_rng([seed, i])``,
so a dataset can be any length, costs no memory, and item ``i`` is the same in every process,
epoch and run. Items are ``{"video": float32 [C, F, H, W] in [-1, 1], "caption": str, ...}``.

- :class:`BouncingShapes`: one colored shape moving on black, with a caption that names its
  color, shape and initial direction (text-to-video with checkable prompts).
- :class:`MovingDigits`: the Moving-MNIST protocol (Srivastava et al. 2015) with digits from
  scikit-learn's bundled 8x8 digits, or from real MNIST files when given.
"""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset


def reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions ``p`` of a free straight-line motion into ``[lo, hi]`` as if reflected at
    both walls (a triangle wave), so any number of bounces is exact in closed form."""
    span = hi - lo
    if span <= 0:
        return np.full_like(p, lo)
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)


def _check_index(index: int, length: int) -> int:
    index = int(index)
    if index < 0:
        index += length
    if not 0 <= index < length:
        raise IndexError(f"index {index} out of range for a dataset of length {length}")
    return index


# ---- bouncing shapes ---------------------------------------------------------------------------


class BouncingShapes(Dataset):
    """One colored shape (square / circle / triangle) on black, moving in a straight line with
    constant velocity and bouncing off the walls. 3 channels.

    The motion is along one axis (``DIRECTIONS``: left, right, up, down) plus a small
    perpendicular drift (at most 15 % of the speed). Speeds are in *canvas sizes per clip*:
    over the clip the shape travels ``U(min_speed, max_speed) * size`` pixels along its axis,
    so motion is equally visible at any ``num_frames``. The shape's half-extent is
    ``U(0.14, 0.2) * size`` (at least 2 px), which leaves a free range of >= 0.6 ``size``;
    with the default speeds (<= 0.35) a clip bounces at most once, and in most clips not at
    all. ``wall_margin`` (a fraction of ``size``, default 0) moves the walls that far inside the
    canvas on every side: the shape then bounces, and stays, at least ``wall_margin * size`` pixels
    from the edges. Caption: ``"a red square moving left"`` (the *initial* direction).

    Item: ``{"video": [3, F, size, size], "caption", "color_id", "shape_id", "direction_id"}``
    with ids indexing ``COLORS``, ``SHAPES``, ``DIRECTIONS``.
    """

    COLORS = ["red", "green", "blue", "yellow", "cyan", "magenta", "white"]
    RGB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], np.float32)
    SHAPES = ["square", "circle", "triangle"]
    DIRECTIONS = ["left", "right", "up", "down"]
    # unit velocity (dy, dx) per direction, image coordinates (y grows downward)
    DIRECTION_VECTORS = np.array([[0, -1], [0, 1], [-1, 0], [1, 0]], np.float64)
    RADIUS_RANGE = (0.14, 0.2)
    MAX_DRIFT = 0.15
    MAX_WALL_MARGIN = 0.2  # the largest shape (half-extent 0.2) then still has a free range of 0.2 of the canvas

    def __init__(self, num_frames: int = 16, size: int = 32, length: int = 10000, seed: int = 0,
                 min_speed: float = 0.15, max_speed: float = 0.35, wall_margin: float = 0.0) -> None:
        if num_frames < 1 or size < 8 or length < 1:
            raise ValueError(f"BouncingShapes needs num_frames >= 1, size >= 8, length >= 1; got "
                             f"num_frames={num_frames}, size={size}, length={length}")
        if not 0 <= min_speed <= max_speed:
            raise ValueError(f"need 0 <= min_speed <= max_speed, got min_speed={min_speed}, max_speed={max_speed}")
        if not 0 <= wall_margin <= self.MAX_WALL_MARGIN:
            raise ValueError(f"wall_margin must be in [0, {self.MAX_WALL_MARGIN}] (a fraction of the canvas on each "
                             f"side, leaving room for the largest shape to move), got {wall_margin}")
        self.num_frames, self.size, self.length, self.seed = num_frames, size, length, seed
        self.min_speed, self.max_speed, self.wall_margin = min_speed, max_speed, wall_margin

    def __len__(self) -> int:
        return self.length

    @classmethod
    def caption_for(cls, color_id: int, shape_id: int, direction_id: int) -> str:
        """The caption of a clip with these ids, e.g. ``"a red square moving left"``."""
        return f"a {cls.COLORS[color_id]} {cls.SHAPES[shape_id]} moving {cls.DIRECTIONS[direction_id]}"

    @classmethod
    def all_captions(cls) -> list[str]:
        """Every caption the dataset can produce (colors x shapes x directions)."""
        return [cls.caption_for(c, s, d) for c in range(len(cls.COLORS)) for s in range(len(cls.SHAPES))
                for d in range(len(cls.DIRECTIONS))]

    def _ids(self, index: int) -> tuple[np.random.Generator, int, int, int]:
        """Item ``index``'s generator after its first three draws: the colour, shape and direction ids."""
        rng = np.random.default_rng([self.seed, _check_index(index, self.length)])
        return (rng, *(int(rng.integers(n)) for n in (len(self.COLORS), len(self.SHAPES), len(self.DIRECTIONS))))

    def params(self, index: int) -> dict:
        """The random choices behind item ``index``: ids, half-extent ``radius`` (px) and the
        shape's center per frame ``centers`` ``[F, 2]`` as (y, x) in pixels."""
        rng, color_id, shape_id, direction_id = self._ids(index)
        s, f = self.size, self.num_frames
        radius = max(2.0, rng.uniform(*self.RADIUS_RANGE) * s)
        lo, hi = radius + self.wall_margin * s, s - radius - self.wall_margin * s
        start = rng.uniform(lo, hi, size=2)
        travel = rng.uniform(self.min_speed, self.max_speed) * s  # pixels over the whole clip
        drift = rng.uniform(-self.MAX_DRIFT, self.MAX_DRIFT)
        along = self.DIRECTION_VECTORS[direction_id]
        velocity = (along + drift * along[::-1]) * travel / max(f - 1, 1)  # px / frame, (dy, dx)
        t = np.arange(f, dtype=np.float64)[:, None]
        centers = reflect(start[None] + t * velocity[None], lo, hi)
        return {"color_id": color_id, "shape_id": shape_id, "direction_id": direction_id,
                "radius": radius, "centers": centers}

    def metadata(self, index: int) -> dict:
        """Item ``index``'s fields other than ``"video"`` (caption and ids), without drawing it."""
        _, color_id, shape_id, direction_id = self._ids(index)
        return {"caption": self.caption_for(color_id, shape_id, direction_id), "color_id": color_id,
                "shape_id": shape_id, "direction_id": direction_id}

    def render(self, shape_id: int, color_id: int, radius: float, centers: np.ndarray) -> np.ndarray:
        """Draw the shape at each center ``[F, 2]`` -> float32 ``[3, F, size, size]`` in [-1, 1]."""
        s = self.size
        coords = np.arange(s, dtype=np.float64) + 0.5  # pixel centers
        dy = coords[None, :, None] - centers[:, 0, None, None]  # [F, H, 1]
        dx = coords[None, None, :] - centers[:, 1, None, None]  # [F, 1, W]
        name = self.SHAPES[shape_id]
        if name == "square":
            mask = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
        elif name == "circle":
            r = radius * 1.1  # about the area of the square of the same half-extent
            mask = dy ** 2 + dx ** 2 <= r * r
        else:  # triangle, apex up: half-width grows linearly from 0 at the top to `radius` at the base
            r = radius * 1.15
            mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        mask = mask.astype(np.float32)  # [F, H, W]
        rgb = self.RGB[color_id][:, None, None, None]  # [3, 1, 1, 1]
        return mask[None] * (rgb * 2.0) - 1.0

    def __getitem__(self, index: int) -> dict:
        p = self.params(index)
        video = self.render(p["shape_id"], p["color_id"], p["radius"], p["centers"])
        return {"video": torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)),
                "caption": self.caption_for(p["color_id"], p["shape_id"], p["direction_id"]),
                "color_id": p["color_id"], "shape_id": p["shape_id"], "direction_id": p["direction_id"]}


# ---- moving digits -----------------------------------------------------------------------------

_DIGIT_CACHE: dict = {}


def _read_idx(path: Path) -> np.ndarray:
    """An MNIST idx file (``.gz`` or raw) -> uint8 array ``[N, rows, cols]`` (or ``[N]`` labels)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an MNIST idx file of unsigned bytes (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    offset = 4 + 4 * ndim
    count = int(np.prod(dims))
    if len(data) - offset < count:
        raise ValueError(f"{path} is truncated: header says {dims} ({count} bytes), file has {len(data) - offset}")
    return np.frombuffer(data, np.uint8, count=count, offset=offset).reshape(dims)


def _labels_path(images: Path) -> Optional[Path]:
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    candidate = images.with_name(name)
    return candidate if candidate != images and candidate.exists() else None


def load_mnist(path) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Real MNIST digits -> (float32 ``[N, 28, 28]`` in [0, 1], int labels ``[N]`` or None).

    ``path`` is ``train-images-idx3-ubyte`` (optionally ``.gz``; labels are read from the
    matching ``train-labels-idx1-ubyte`` next to it when present), a folder holding it, or an
    ``.npz`` with ``x_train`` (and optionally ``y_train``).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = [path / n for n in ("train-images-idx3-ubyte", "train-images-idx3-ubyte.gz",
                                    "train-images.idx3-ubyte") if (path / n).exists()]
        if not found:
            raise FileNotFoundError(f"no train-images-idx3-ubyte(.gz) in folder {path}")
        path = found[0]
    if not path.exists():
        raise FileNotFoundError(f"MNIST file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x_train" not in z:
                raise ValueError(f"{path} has no 'x_train' array (has {sorted(z.keys())})")
            images = np.asarray(z["x_train"])
            labels = np.asarray(z["y_train"]).astype(np.int64) if "y_train" in z else None
    else:
        images = _read_idx(path)
        lp = _labels_path(path)
        labels = _read_idx(lp).astype(np.int64) if lp is not None else None
    if images.ndim == 4 and images.shape[-1] == 1:  # [N, H, W, 1]
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"{path}: expected images [N, H, W], got shape {images.shape}")
    if labels is not None and len(labels) != len(images):
        labels = None
    scale = 255.0 if images.max() > 1 else 1.0
    return images.astype(np.float32) / scale, labels


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797, no download) -> float32 ``[N, 8, 8]`` in [0, 1], labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_bank(mnist_path=None, digit_size: int = 28) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Digit images resized (bilinear) to ``digit_size`` -> float32 ``[N, s, s]`` in [0, 1] and
    labels (None when unknown). Cached per (path, size) within a process."""
    key = (str(mnist_path) if mnist_path else None, digit_size)
    if key not in _DIGIT_CACHE:
        images, labels = load_mnist(mnist_path) if mnist_path else load_sklearn_digits()
        if images.shape[1:] != (digit_size, digit_size):
            x = torch.from_numpy(images)[:, None]
            x = torch.nn.functional.interpolate(x, size=(digit_size, digit_size), mode="bilinear",
                                                align_corners=False, antialias=images.shape[1] > digit_size)
            images = x[:, 0].clamp(0, 1).numpy()
        _DIGIT_CACHE[key] = (np.ascontiguousarray(images, dtype=np.float32), labels)
    return _DIGIT_CACHE[key]


class MovingDigits(Dataset):
    """Moving-MNIST (Srivastava et al. 2015): ``num_digits`` digits bouncing inside a
    ``size x size`` canvas, each with a random start position and a random direction, reflected
    at the borders and composited by maximum. 1 channel.

    Digits come from scikit-learn's bundled 8x8 digits upscaled (bilinear) to ``digit_size``,
    or from real MNIST when ``mnist_path`` is given (see :func:`load_mnist`). ``digit_size``
    defaults to ``28 * size / 64`` (28 px on the protocol's 64 px canvas). Speeds are in
    fractions of the free range ``size - digit_size`` per frame (the protocol's step is 0.1).

    Item: ``{"video": [1, F, size, size], "caption": "digits 3 and 7", "digits": [3, 7]}``
    (``-1`` and caption ``"moving digits"`` when the source has no labels).
    """

    def __init__(self, num_frames: int = 16, size: int = 64, num_digits: int = 2, length: int = 10000,
                 seed: int = 0, mnist_path=None, digit_size: Optional[int] = None,
                 min_speed: float = 0.07, max_speed: float = 0.13) -> None:
        digit_size = digit_size or max(4, round(size * 28 / 64))
        if num_frames < 1 or length < 1 or num_digits < 1:
            raise ValueError(f"MovingDigits needs num_frames, length, num_digits >= 1; got num_frames={num_frames}, "
                             f"length={length}, num_digits={num_digits}")
        if digit_size > size:
            raise ValueError(f"digit_size={digit_size} does not fit in a canvas of size={size}")
        if not 0 <= min_speed <= max_speed:
            raise ValueError(f"need 0 <= min_speed <= max_speed, got min_speed={min_speed}, max_speed={max_speed}")
        self.num_frames, self.size, self.num_digits = num_frames, size, num_digits
        self.length, self.seed, self.digit_size = length, seed, digit_size
        self.min_speed, self.max_speed = min_speed, max_speed
        self.mnist_path = mnist_path
        self.images, self.labels = digit_bank(mnist_path, digit_size)
        if self.labels is None:
            warnings.warn(f"MovingDigits: no labels found for {mnist_path}; captions will not name the digits")

    def __len__(self) -> int:
        return self.length

    @staticmethod
    def caption_for(digits: list[int]) -> str:
        """``[3]`` -> ``"digit 3"``, ``[3, 7]`` -> ``"digits 3 and 7"``, ``[1, 2, 3]`` -> ``"digits 1, 2 and 3"``."""
        if any(d < 0 for d in digits):
            return "moving digits"
        names = [str(d) for d in digits]
        if len(names) == 1:
            return f"digit {names[0]}"
        return f"digits {', '.join(names[:-1])} and {names[-1]}"

    def trajectories(self, rng: np.random.Generator) -> np.ndarray:
        """Top-left corners ``[num_digits, F, 2]`` (y, x), integer pixels."""
        free = self.size - self.digit_size
        start = rng.uniform(0, free, size=(self.num_digits, 2))
        theta = rng.uniform(0, 2 * math.pi, size=self.num_digits)
        speed = rng.uniform(self.min_speed, self.max_speed, size=self.num_digits) * free
        velocity = np.stack([np.sin(theta), np.cos(theta)], -1) * speed[:, None]
        t = np.arange(self.num_frames, dtype=np.float64)[None, :, None]
        pos = reflect(start[:, None] + t * velocity[:, None], 0.0, float(free))
        return np.rint(pos).astype(np.int64)

    def _picks(self, index: int) -> tuple[np.random.Generator, np.ndarray, list[int]]:
        """Item ``index``'s generator after its first draw: the digit images picked, and their labels."""
        rng = np.random.default_rng([self.seed, _check_index(index, self.length)])
        picks = rng.integers(len(self.images), size=self.num_digits)
        digits = [int(self.labels[p]) for p in picks] if self.labels is not None else [-1] * self.num_digits
        return rng, picks, digits

    def metadata(self, index: int) -> dict:
        """Item ``index``'s fields other than ``"video"`` (caption and digits), without drawing it."""
        _, _, digits = self._picks(index)
        return {"caption": self.caption_for(digits), "digits": digits}

    def __getitem__(self, index: int) -> dict:
        rng, picks, digits = self._picks(index)
        corners = self.trajectories(rng)
        s, d = self.size, self.digit_size
        canvas = np.zeros((self.num_frames, s, s), np.float32)
        for k, pick in enumerate(picks):
            digit = self.images[pick]
            for f in range(self.num_frames):
                y, x = corners[k, f]
                np.maximum(canvas[f, y:y + d, x:x + d], digit, out=canvas[f, y:y + d, x:x + d])
        video = torch.from_numpy(canvas)[None] * 2.0 - 1.0  # [1, F, H, W]
        return {"video": video, "caption": self.caption_for(digits), "digits": digits}
