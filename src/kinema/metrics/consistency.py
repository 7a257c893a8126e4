"""Temporal consistency of bouncing-shapes videos: does one object keep its colour, shape and motion?

Every :class:`~kinema.data.synthetic.BouncingShapes` clip is one shape of one colour moving at a
bounded speed, so a sample can be checked frame by frame without a learned classifier. Per frame,
the *object* is the largest 4-connected component of the bright pixels (some channel above
mid-grey, as in :mod:`kinema.metrics.prompt_following`); a sample passes when

1. **present**: every frame has an object of at least ``min_pixels`` pixels;
2. **colour**: the object's colour class (majority vote of its pixels' RGB corners, see
   :func:`~kinema.metrics.prompt_following.dominant_color`) is the same in every frame;
3. **shape**: one shape class fits it in every frame: per frame, the square / circle / triangle
   templates fitted to its bounding box are scored by their overlap (IoU, :func:`shape_ious`), and
   some class is within ``shape_tolerance`` (default :data:`SHAPE_TOLERANCE`) of the frame's best in
   every frame. With tolerance 0 this is "the best-fitting class (:func:`shape_class`) is the same
   in every frame"; the small tolerance keeps a near-tie from deciding the check, e.g. a square with
   one stray edge pixel, whose box grows by a pixel and whose square and circle fits then differ by
   less than 0.03 (see :data:`SHAPE_TOLERANCE`);
4. **motion**: its centroid moves by at most ``max_step`` pixels between consecutive frames (the
   data's maximum speed, :func:`max_step_pixels`, plus a tolerance for pixel rounding).

:func:`consistency` reports the share passing all four (and each check on its own). It works on
any ``[N, 3, F, H, W]`` tensor in [-1, 1] — any number of frames, e.g. an extended video — given
the per-frame speed bound of the data the model was trained on.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from kinema.data.synthetic import BouncingShapes
from kinema.metrics.prompt_following import UNKNOWN, dominant_color

SQUARE, CIRCLE, TRIANGLE = (BouncingShapes.SHAPES.index(n) for n in ("square", "circle", "triangle"))

# The shape check's tolerance on the template IoU. Two stray pixels on the outline of each frame of real
# clips (32x32) change the best-fitting class in 19 % of 256 clips with tolerance 0, in 5.5 % with 0.02 and
# in none with 0.03, while a frame redrawn as another shape is still caught in 256 of 256 clips at 0.03
# and 0.05 (benchmarks/README.md, "the shape check's tolerance").
SHAPE_TOLERANCE = 0.03


def max_step_pixels(size: int, num_frames: int, max_speed: float = 0.35, tolerance: float = 1.0) -> float:
    """Largest centroid displacement (px / frame) of a bouncing-shapes clip of ``num_frames`` frames of
    ``size`` pixels, plus ``tolerance`` px for rasterization.

    The shape travels at most ``max_speed * size`` pixels along its axis over the clip
    (``num_frames - 1`` steps), with a perpendicular drift of at most ``MAX_DRIFT`` of that;
    reflection at a wall never lengthens a step. A rasterized centroid is off its true position by
    less than half a pixel per axis, so consecutive frames may differ by up to ~1 px more.
    """
    along = max_speed * size / max(num_frames - 1, 1)
    return along * math.hypot(1.0, BouncingShapes.MAX_DRIFT) + tolerance


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool ``mask [H, W]`` (all False when empty)."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(sizes.argmax()))


def shape_templates(height: int, width: int) -> np.ndarray:
    """Bool ``[3, height, width]``: the square, circle and triangle (apex up) that fill a
    ``height x width`` bounding box, drawn as :meth:`BouncingShapes.render` draws them (pixel centres)."""
    a, b = height / 2, width / 2
    py = (np.arange(height) + 0.5 - a)[:, None]  # pixel-centre offsets from the box centre
    px = (np.arange(width) + 0.5 - b)[None, :]
    square = np.ones((height, width), bool)
    # A rasterized disc's extreme pixel centres lie within its radius, so its box is up to a pixel
    # wider than the disc: the fitted disc reaches ~0.4 px beyond the box's outer pixel centres.
    circle = (py / (a + 0.4)) ** 2 + (px / (b + 0.4)) ** 2 <= 1.0
    triangle = np.abs(px) <= b * (py / a + 1.0) / 2 + 0.5  # half-width grows from 0 (top) to b (base)
    return np.stack([square, circle, triangle])


def shape_ious(mask: np.ndarray) -> np.ndarray:
    """IoU of the object ``mask [H, W]`` (bool) with each shape template (:func:`shape_templates`,
    fitted to its bounding box), indexed like ``BouncingShapes.SHAPES``: float ``[3]``, all 0 when
    the mask is empty."""
    ious = np.zeros(len(BouncingShapes.SHAPES))
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return ious
    box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    templates = shape_templates(*box.shape)
    ious[[SQUARE, CIRCLE, TRIANGLE]] = (templates & box).sum(axis=(1, 2)) / (templates | box).sum(axis=(1, 2))
    return ious


def shape_class(mask: np.ndarray) -> int:
    """Index into ``BouncingShapes.SHAPES`` of the object ``mask [H, W]`` (bool): the shape template
    with the highest IoU (:func:`shape_ious`); ``UNKNOWN`` when empty."""
    if not mask.any():
        return UNKNOWN
    return int(shape_ious(mask).argmax())


def consistent_shape(ious: np.ndarray, tolerance: float = SHAPE_TOLERANCE) -> bool:
    """Whether one shape class fits every frame: ``ious [F, 3]`` (:func:`shape_ious` per frame) has a
    class whose IoU is within ``tolerance`` of the frame's best IoU in every frame."""
    if tolerance < 0:
        raise ValueError(f"shape tolerance must be >= 0, got {tolerance}")
    near_best = ious >= ious.max(axis=1, keepdims=True) - tolerance
    return bool(near_best.all(axis=0).any())


def frame_objects(video: Tensor) -> dict:
    """Per frame of ``video [3, F, H, W]`` in [-1, 1]: the object's pixel count, colour id, shape id
    and centroid (y, x). Returns numpy arrays ``pixels [F]``, ``color [F]``, ``shape [F]``,
    ``ious [F, 3]`` (:func:`shape_ious`), ``centroid [F, 2]`` (``UNKNOWN`` / 0 / NaN for frames
    without bright pixels)."""
    video = video.detach().float().cpu()
    bright = (video.amax(dim=0) > 0).numpy()  # [F, H, W]
    f = bright.shape[0]
    out = {"pixels": np.zeros(f, np.int64), "color": np.full(f, UNKNOWN), "shape": np.full(f, UNKNOWN),
           "ious": np.zeros((f, len(BouncingShapes.SHAPES))), "centroid": np.full((f, 2), np.nan)}
    for i in range(f):
        obj = largest_component(bright[i])
        n = int(obj.sum())
        out["pixels"][i] = n
        if n == 0:
            continue
        frame = video[:, i] * torch.from_numpy(obj)[None] - torch.from_numpy(~obj)[None].float()  # only the object
        out["color"][i] = dominant_color(frame[:, None])
        out["ious"][i] = shape_ious(obj)
        out["shape"][i] = int(out["ious"][i].argmax())
        ys, xs = np.nonzero(obj)
        out["centroid"][i] = (ys.mean(), xs.mean())
    return out


def clip_shape(video: Tensor) -> int:
    """The shape class of ``video [3, F, H, W]``'s object over the clip: the most frequent of its frames'
    best-fitting classes (:func:`shape_class`; ties go to the lower index), ``UNKNOWN`` when no frame
    has an object."""
    shapes = frame_objects(video)["shape"]
    shapes = shapes[shapes != UNKNOWN]
    if len(shapes) == 0:
        return UNKNOWN
    return int(np.bincount(shapes, minlength=len(BouncingShapes.SHAPES)).argmax())


def check_video(video: Tensor, max_step: float, min_pixels: int, shape_tolerance: float = SHAPE_TOLERANCE) -> dict:
    """The four checks for one ``video [3, F, H, W]`` -> dict of bools (``present``, ``color``,
    ``shape``, ``motion``, ``passed``) and the per-frame classes behind them."""
    obj = frame_objects(video)
    present = bool((obj["pixels"] >= min_pixels).all())
    color = present and len(set(obj["color"].tolist())) == 1
    shape = present and consistent_shape(obj["ious"], shape_tolerance)
    steps = np.linalg.norm(np.diff(obj["centroid"], axis=0), axis=1) if present else np.array([np.inf])
    motion = present and bool((steps <= max_step).all())
    return {"present": present, "color": bool(color), "shape": bool(shape), "motion": motion,
            "passed": bool(present and color and shape and motion), "colors": obj["color"].tolist(),
            "shapes": obj["shape"].tolist(), "max_step": float(steps.max()) if len(steps) else 0.0}


def default_min_pixels(size: int) -> int:
    """A present object covers at least a quarter of the smallest shape's area and at least 3 pixels.
    The smallest shape is a triangle of half-extent ``r = 0.14 size`` (BouncingShapes.RADIUS_RANGE):
    height ``2.3 r``, base ``2.3 r``, area ~``2.6 r^2``."""
    r = BouncingShapes.RADIUS_RANGE[0] * size
    return max(3, round(0.25 * 2.6 * r * r))


def consistency(videos: Tensor, *, max_step: Optional[float] = None, train_frames: Optional[int] = None,
                min_pixels: Optional[int] = None, max_speed: float = 0.35,
                shape_tolerance: float = SHAPE_TOLERANCE) -> dict:
    """Temporal-consistency score of bouncing-shapes ``videos [N, 3, F, H, W]`` in [-1, 1].

    ``max_step``: largest allowed centroid step in px / frame; default :func:`max_step_pixels` for the
    videos' size and ``train_frames`` frames per clip (default F; give the training clip length when
    scoring videos longer than the clips, e.g. extended ones, since speeds are per training clip).
    ``shape_tolerance``: how far (in template IoU) a frame's fit of the common class may fall below its
    best fit (:func:`consistent_shape`); 0 asks for the same best-fitting class in every frame.
    Returns ``{"consistency": share passing all four checks, "present" / "color" / "shape" /
    "motion": share passing each, "empty": share with an empty frame, "num": N, "per_sample": [...]}``.
    """
    if videos.ndim != 5 or videos.shape[1] != 3:
        raise ValueError(f"consistency expects videos [N, 3, F, H, W], got {tuple(videos.shape)}")
    n, _, f, h, w = videos.shape
    if max_step is None:
        max_step = max_step_pixels(min(h, w), train_frames or f, max_speed)
    if min_pixels is None:
        min_pixels = default_min_pixels(min(h, w))
    if shape_tolerance < 0:
        raise ValueError(f"shape_tolerance must be >= 0, got {shape_tolerance}")
    rows = [check_video(v, max_step, min_pixels, shape_tolerance) for v in videos]
    share = {k: sum(r[k] for r in rows) / n for k in ("passed", "present", "color", "shape", "motion")}
    empty = sum(r["colors"].count(UNKNOWN) > 0 for r in rows) / n
    return {"consistency": share.pop("passed"), **share, "empty": empty, "num": n, "max_step": max_step,
            "min_pixels": min_pixels, "shape_tolerance": shape_tolerance, "per_sample": [r["passed"] for r in rows]}


def repeat_frames(videos: Tensor, min_frames: int = 9) -> Tensor:
    """Repeat every frame of ``videos [N, C, F, H, W]`` ``ceil(min_frames / F)`` times (nearest-neighbour
    in time) so that clips shorter than I3D's minimum (9 frames) can be scored; unchanged when
    ``F >= min_frames``. Apply it to the generated *and* the reference clips: an 8-frame clip becomes
    16 frames at half the speed on both sides, so FVD compares like with like (its values are not
    comparable with FVDs of native 16-frame clips)."""
    f = videos.shape[2]
    return videos if f >= min_frames else videos.repeat_interleave(math.ceil(min_frames / f), dim=2)


def reference_clips(num: int, frames: int, size: int, seed: int = 12345) -> Tensor:
    """``num`` bouncing-shapes clips ``[num, 3, frames, size, size]`` drawn with ``seed`` (training data
    uses seed 0 by default, so these are clips a model never saw)."""
    data = BouncingShapes(num_frames=frames, size=size, length=10 ** 6, seed=seed)
    return torch.stack([data[i]["video"] for i in range(num)])


def fvd_against(videos: Tensor, reference: Tensor, *, weights=None, device="cpu", batch_size: int = 8) -> float:
    """FVD (real I3D weights: the cached asset, or ``weights``) of ``videos`` against ``reference``,
    both ``[N, 3, F, H, W]`` in [-1, 1]; clips shorter than 9 frames go through :func:`repeat_frames`."""
    from kinema.data.io import to_uint8
    from kinema.metrics.assets import resolve_weights
    from kinema.metrics.features import extract_features, preprocess_i3d
    from kinema.metrics.frechet import GaussianStats, frechet_from_stats
    from kinema.metrics.i3d import load_i3d

    net = load_i3d(resolve_weights("i3d", weights), torch.device(device))

    def stats(clips: Tensor, desc: str):
        arr = to_uint8(repeat_frames(clips))
        return GaussianStats.from_features(extract_features(net, arr, preprocess_i3d, batch_size=batch_size,
                                                            total=len(arr), desc=desc))

    return float(frechet_from_stats(stats(videos, "generated"), stats(reference, "reference")))


__all__ = ["fvd_against", "reference_clips", "repeat_frames", "CIRCLE", "SQUARE", "TRIANGLE", "SHAPE_TOLERANCE", "check_video", "clip_shape", "consistency", "consistent_shape", "default_min_pixels", "frame_objects",
           "largest_component", "max_step_pixels", "shape_class", "shape_ious", "shape_templates"]
