"""TensorFlow "SAME" padding for PyTorch convolutions and pools.

TensorFlow pads a "SAME" window so the output has ``ceil(n / stride)`` positions. The total
padding along one axis is ``max((ceil(n / s) - 1) * s + k - n, 0)``; ``total // 2`` goes before
and the remainder (the extra pixel) after. Convolutions pad with zeros; max pools ignore the
padding, which is the same as padding with ``-inf``. PyTorch's symmetric ``padding=`` cannot
express the uneven split, so these helpers pad explicitly before a VALID op.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch.nn.functional as F
from torch import Tensor


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis of length ``size`` for a TF "SAME" window."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: Sequence[int], stride: Sequence[int], value: float = 0.0) -> Tensor:
    """Pad the trailing ``len(kernel)`` axes of ``x`` as TF "SAME" would (extra pixel after)."""
    pads: list[int] = []
    for size, k, s in reversed(list(zip(x.shape[-len(kernel):], kernel, stride))):
        pads.extend(same_padding(size, k, s))  # F.pad lists the last axis first
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)
