"""The one resize of kinema: frames ``[N, C, H, W]`` and videos ``[B, C, F, H, W]``.

Used by the conditioning inputs of super-resolution backbones (low-resolution video brought to the
output size), by reconstruction guidance's downsampling operator (VDM eq. 8), by reading inputs for
``kinema extend`` / ``upsample`` and by the feature extractors of FVD / FID. Space is resized
bilinearly (optionally antialiased: a triangle low-pass filter first when shrinking, like PIL's
bilinear resize); time is resized by nearest-frame selection, i.e. frames are repeated when the
count grows (Imagen Video's temporal super-resolution input, Ho et al. 2022, section 2.2).
Differentiable in space.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"resize: the target size must be positive, got {(h, w)}")
    return h, w


def resize_frames(frames: Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> Tensor:
    """Bilinear resize (align_corners=False) of images ``[N, C, H, W]`` to ``size`` (an int is a square)."""
    size = _pair(size)
    if tuple(frames.shape[-2:]) == size:
        return frames
    return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=antialias)


def resize_video(video: Tensor, size: Optional[int | tuple[int, int]] = None, *, frames: Optional[int] = None,
                 antialias: bool = True) -> Tensor:
    """``[B, C, F, H, W] -> [B, C, frames, size[0], size[1]]``: each frame resized by :func:`resize_frames`
    (``size`` None keeps H, W); ``frames`` (None keeps F) by nearest-frame selection, which repeats
    frames when upsampling in time."""
    b, c, f, h, w = video.shape
    if frames is not None and frames != f:
        if frames < 1:
            raise ValueError(f"resize: the target frame count must be positive, got {frames}")
        video = F.interpolate(video, size=(frames, h, w), mode="nearest")  # [B, C, frames, H, W]
        f = frames
    if size is None or tuple(video.shape[-2:]) == _pair(size):
        return video
    flat = video.transpose(1, 2).flatten(0, 1)  # '(b f) c h w'
    return resize_frames(flat, size, antialias=antialias).unflatten(0, (b, f)).transpose(1, 2)


__all__ = ["resize_frames", "resize_video"]
