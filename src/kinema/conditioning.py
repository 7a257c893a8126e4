"""The one typed conditioning object that travels from data to backbone.

Every backbone is called as ``net(z_t, logsnr, cond)`` (DESIGN.md section 3) where ``cond`` is a
:class:`Conditioning`. Fields that do not apply stay ``None``; a backbone ignores what it was not
built to use and raises if it *requires* a field that is missing.

Shapes (B = batch, F = frames, L = text tokens):

- ``text_emb``        ``[B, L, D]`` float, token embeddings from a text encoder
- ``text_mask``       ``[B, L]`` bool, True where a token is real
- ``class_labels``    ``[B]`` long
- ``context``         ``[B, C, F, H, W]`` clean frames known to the model (prediction models)
- ``context_mask``    ``[B, F]`` bool, True where ``context`` holds a known frame
- ``lowres``          ``[B, C, F', H', W']`` low-resolution video for super-resolution models
- ``lowres_logsnr``   ``[B]`` log-SNR of the augmentation noise on ``lowres``
- ``fps``             ``[B]`` float frames per second
- ``guidance_weight`` ``[B]`` float, for guided distilled students
- ``frame_segments``  ``[B, F]`` long. Structural, never dropped: temporal layers let frame i
  see frame j only when ``frame_segments[b, i] == frame_segments[b, j]``. ``None`` means every
  frame of an item belongs to one clip. Joint image-video training (VDM section 3) appends
  independent images as extra frames, each with a segment id of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor


@dataclass
class Conditioning:
    text_emb: Optional[Tensor] = None
    text_mask: Optional[Tensor] = None
    class_labels: Optional[Tensor] = None
    context: Optional[Tensor] = None
    context_mask: Optional[Tensor] = None
    lowres: Optional[Tensor] = None
    lowres_logsnr: Optional[Tensor] = None
    fps: Optional[Tensor] = None
    guidance_weight: Optional[Tensor] = None
    frame_segments: Optional[Tensor] = None

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Conditioning":
        """A copy with ``fn`` applied to every tensor field that is set."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = fn(value) if isinstance(value, Tensor) else value
        return Conditioning(**values)

    def to(self, *args, **kwargs) -> "Conditioning":
        return self.map(lambda t: t.to(*args, **kwargs))

    def repeat(self, n: int) -> "Conditioning":
        """Every field repeated ``n`` times along the batch axis (``[B, ...] -> [n*B, ...]``)."""
        return self.map(lambda t: torch.cat([t] * n, dim=0))

    def set_fields(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch axis. Every item must set the same fields."""
        names = items[0].set_fields()
        for item in items[1:]:
            if item.set_fields() != names:
                raise ValueError(
                    f"cannot concatenate conditionings with different fields: {names} vs {item.set_fields()}"
                )
        return Conditioning(**{n: torch.cat([getattr(i, n) for i in items], dim=0) for n in names})
