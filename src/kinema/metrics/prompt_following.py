"""Prompt following on bouncing shapes: analytic classifiers of a clip's colour, shape and direction of motion.

A bouncing-shapes caption ("a red square moving left") names a colour out of
:attr:`~kinema.data.synthetic.BouncingShapes.COLORS` (pure RGB primaries, secondaries and white) and
the *initial* direction out of ``DIRECTIONS``. Both can be read back from pixels without a learned
classifier, so a text-conditional model's samples can be checked against their prompts:

- colour: every bright pixel (some channel above mid-grey) votes for the colour whose RGB corners
  match the signs of its three channels (that is, its hue sector, with low saturation = white); the
  majority wins;
- shape (when the captions name one): the most frequent per-frame shape class of the clip's object
  (:func:`kinema.metrics.consistency.clip_shape`: the square / circle / triangle template that fits
  its bounding box best);
- direction: the centroid of the bright pixels per frame; the axis along which it travels further
  in total is the motion axis; the sign of its first displacement beyond ``threshold`` pixels from
  frame 0 is the initial direction (a later bounce does not change it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kinema.data.synthetic import BouncingShapes

UNKNOWN = -1  # classifier output when a clip has no bright pixels / no motion


def bright_mask(video: Tensor) -> Tensor:
    """``video [3, F, H, W]`` in [-1, 1] -> bool ``[F, H, W]``: pixels with some channel above 0 (mid-grey)."""
    return video.amax(dim=0) > 0


def dominant_color(video: Tensor) -> int:
    """Index into ``BouncingShapes.COLORS`` of the majority colour of the bright pixels of
    ``video [3, F, H, W]``, or ``UNKNOWN`` when there are none. Each bright pixel's colour is the
    RGB corner with the signs of its channels (``RGB`` entries are 0/1 per channel)."""
    mask = bright_mask(video)
    if not mask.any():
        return UNKNOWN
    bits = (video > 0)[:, mask].long()  # [3, N] channel on/off
    codes = bits[0] * 4 + bits[1] * 2 + bits[2]  # [N]
    table = torch.as_tensor(BouncingShapes.RGB, dtype=torch.long)
    color_codes = table[:, 0] * 4 + table[:, 1] * 2 + table[:, 2]  # [num_colors]
    votes = (codes[:, None] == color_codes[None]).sum(dim=0)  # [num_colors]
    return int(votes.argmax()) if votes.sum() > 0 else UNKNOWN


def centroids(video: Tensor) -> np.ndarray:
    """Centroid (y, x) in pixels of the bright pixels per frame -> ``[F, 2]`` (NaN for empty frames)."""
    mask = bright_mask(video).double()  # [F, H, W]
    _, h, w = mask.shape
    ys = torch.arange(h, dtype=torch.float64)[None, :, None]
    xs = torch.arange(w, dtype=torch.float64)[None, None, :]
    mass = mask.sum(dim=(1, 2))
    cy = (mask * ys).sum(dim=(1, 2)) / mass
    cx = (mask * xs).sum(dim=(1, 2)) / mass
    return torch.stack([cy, cx], dim=1).numpy()  # NaN where mass == 0


def motion_direction(video: Tensor, threshold: float = 0.5) -> int:
    """Index into ``BouncingShapes.DIRECTIONS`` of the initial direction of motion of the bright
    region of ``video [3, F, H, W]``, or ``UNKNOWN`` (fewer than 2 non-empty frames, or no
    displacement beyond ``threshold`` pixels)."""
    c = centroids(video)
    c = c[~np.isnan(c).any(axis=1)]
    if len(c) < 2:
        return UNKNOWN
    axis = int(np.abs(np.diff(c, axis=0)).sum(axis=0).argmax())  # 0: vertical (y), 1: horizontal (x)
    moved = c[1:, axis] - c[0, axis]
    beyond = np.flatnonzero(np.abs(moved) > threshold)
    if len(beyond) == 0:
        return UNKNOWN
    step = np.zeros(2)
    step[axis] = np.sign(moved[beyond[0]])
    return int(np.flatnonzero((BouncingShapes.DIRECTION_VECTORS == step).all(axis=1))[0])


def classify(videos: Tensor, threshold: float = 0.5) -> tuple[list[int], list[int]]:
    """``videos [N, 3, F, H, W]`` -> (colour ids, direction ids), ``UNKNOWN`` where undecidable."""
    return ([dominant_color(v) for v in videos], [motion_direction(v, threshold) for v in videos])


def parse_caption(caption: str) -> tuple[int, int]:
    """``"a red square moving left"`` -> (colour id, direction id); ValueError for other captions."""
    words = caption.lower().split()
    colors = [i for i, c in enumerate(BouncingShapes.COLORS) if c in words]
    directions = [i for i, d in enumerate(BouncingShapes.DIRECTIONS) if d in words]
    if len(colors) != 1 or len(directions) != 1:
        raise ValueError(f"caption {caption!r} does not name exactly one colour of {BouncingShapes.COLORS} and "
                         f"one direction of {BouncingShapes.DIRECTIONS}")
    return colors[0], directions[0]


def caption_shape(caption: str) -> int:
    """Index into ``BouncingShapes.SHAPES`` of the one shape ``caption`` names, ``UNKNOWN`` when it names
    none or several."""
    words = caption.lower().split()
    shapes = [i for i, s in enumerate(BouncingShapes.SHAPES) if s in words]
    return shapes[0] if len(shapes) == 1 else UNKNOWN


def prompt_following(videos: Tensor, prompts: list[str], threshold: float = 0.5) -> dict:
    """Share of ``videos [N, 3, F, H, W]`` whose colour / direction match their ``prompts`` (length N),
    with the chance levels ``1 / len(COLORS)`` and ``1 / len(DIRECTIONS)``; when every prompt names a
    shape, also ``shape_accuracy`` (chance ``1 / len(SHAPES)``)."""
    from kinema.metrics.consistency import clip_shape  # consistency builds on this module's colour classifier

    if len(prompts) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
    want = [parse_caption(p) for p in prompts]
    colors, directions = classify(videos, threshold)
    n = len(videos)
    shapes = {}
    want_shapes = [caption_shape(p) for p in prompts]
    if UNKNOWN not in want_shapes:
        shapes = {"shape_accuracy": sum(clip_shape(v) == s for v, s in zip(videos, want_shapes)) / n,
                  "shape_chance": 1 / len(BouncingShapes.SHAPES)}
    return {
        **shapes,
        "color_accuracy": sum(c == w[0] for c, w in zip(colors, want)) / n,
        "direction_accuracy": sum(d == w[1] for d, w in zip(directions, want)) / n,
        "color_chance": 1 / len(BouncingShapes.COLORS),
        "direction_chance": 1 / len(BouncingShapes.DIRECTIONS),
        "undecided_color": sum(c == UNKNOWN for c in colors) / n,
        "undecided_direction": sum(d == UNKNOWN for d in directions) / n,
        "num": n,
    }


__all__ = ["UNKNOWN", "bright_mask", "caption_shape", "centroids", "classify", "dominant_color", "motion_direction", "parse_caption",
           "prompt_following"]
