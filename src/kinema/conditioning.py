"""The one typed conditioning object that travels from data to backbone.

Every backbone is called as ``net(z_t, logsnr, cond)`` (DESIGN.md section 3) where ``cond`` is a
:class:`Conditioning`. Fields that do not apply stay ``None``; a backbone ignores what it was not
built to use and raises if it *requires* a field that is missing.

Shapes (B = batch, F = frames, L = text tokens):

- ``text_emb``        ``[B, L, D]`` float, token embeddings from a text encoder
- ``text_mask``       ``[B, L]`` bool, True where a token is real
- ``class_labels``    ``[B]`` long; a negative label (``NULL_LABEL``) is the null / unconditional label
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
- ``self_cond``       ``[B, C, F, H, W]`` the previous estimate x_hat of the clean z, for
  self-conditioned backbones (Chen et al. 2022, "Analog Bits"; spec ``reads`` has ``"self_cond"``).
  Set by the objective in training and by the sampling pipelines; ``None`` means "no estimate yet"
  (the backbone uses zeros). Never dropped by guidance: both branches get the same estimate.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

NULL_LABEL = -1  # class label meaning "no class" (classifier-free guidance's unconditional input)

# Fields that classifier-free guidance drops. Structural / always-given inputs (frame_segments, lowres
# and its noise level, fps, guidance_weight) are never dropped.
DROPPABLE = ("text", "class_labels", "context")
# What text / class classifier-free guidance (and its training-time dropout) drops: the labels, not context.
LABEL_FIELDS = ("text", "class_labels")


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
    self_cond: Optional[Tensor] = None

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


def drop_conditioning(cond: Optional[Conditioning], drop: Optional[Tensor] = None,
                      fields: tuple[str, ...] = DROPPABLE) -> Optional[Conditioning]:
    """The unconditional counterpart of ``cond`` for classifier-free guidance (Ho & Salimans 2021,
    section 3.2: a null token replaces the conditioning with some probability in training, and
    always for the unconditional prediction at sampling time). The one place this is decided.

    ``drop [B]`` bool selects the items to make unconditional (``None``: all of them). For those
    items: ``text_mask`` becomes all False and ``text_emb`` zero (the backbone must accept a fully
    masked text, e.g. through a learned null token); ``class_labels`` becomes ``NULL_LABEL``;
    ``context_mask`` becomes all False and ``context`` zero (no known frames). ``fields`` limits
    which of ``"text"``, ``"class_labels"``, ``"context"`` are dropped (e.g. guidance over text only).
    Other fields are returned unchanged. Returns a new object; ``cond`` is not modified.
    """
    if cond is None:
        return None
    unknown = set(fields) - set(DROPPABLE)
    if unknown:
        raise ValueError(f"drop_conditioning: unknown fields {sorted(unknown)}; choose from {DROPPABLE}")
    out = dataclasses.replace(cond)

    def where(keep_value: Tensor, dropped_value) -> Tensor:
        if drop is None:
            return torch.as_tensor(dropped_value, dtype=keep_value.dtype, device=keep_value.device).expand_as(
                keep_value).clone()
        d = drop.to(keep_value.device).reshape(-1, *([1] * (keep_value.ndim - 1)))
        return torch.where(d, torch.as_tensor(dropped_value, dtype=keep_value.dtype, device=keep_value.device),
                           keep_value)

    if "text" in fields:
        if cond.text_emb is not None:
            out.text_emb = where(cond.text_emb, 0)
        if cond.text_mask is not None:
            out.text_mask = where(cond.text_mask, False)
    if "class_labels" in fields and cond.class_labels is not None:
        out.class_labels = where(cond.class_labels, NULL_LABEL)
    if "context" in fields:
        if cond.context is not None:
            out.context = where(cond.context, 0)
        if cond.context_mask is not None:
            out.context_mask = where(cond.context_mask, False)
    return out


def with_fields(cond: Optional[Conditioning], **fields) -> Conditioning:
    """A copy of ``cond`` (or an empty Conditioning) with ``fields`` set; ``cond`` is unchanged."""
    return dataclasses.replace(cond, **fields) if cond is not None else Conditioning(**fields)


def with_self_cond(cond: Optional[Conditioning], x_hat: Optional[Tensor]) -> Conditioning:
    """``cond`` (or an empty Conditioning) with ``self_cond = x_hat`` (a copy; ``cond`` is unchanged)."""
    return with_fields(cond, self_cond=x_hat)


def with_context(cond: Optional[Conditioning], frames: Tensor, known: Tensor) -> Conditioning:
    """``cond`` (or an empty Conditioning) with known frames for a context-conditioned model:
    ``context = frames`` zeroed where unknown, ``context_mask = known``. ``frames [B, C, F, H, W]``,
    ``known [B, F]`` bool; an all-False ``known`` is the null (unconditional) context."""
    if known.dtype != torch.bool or known.shape != (frames.shape[0], frames.shape[2]):
        raise ValueError(f"context mask must be bool [B, F] = {[frames.shape[0], frames.shape[2]]}, got "
                         f"{known.dtype} of shape {tuple(known.shape)}")
    return with_fields(cond, context=frames * known[:, None, :, None, None].to(frames.dtype), context_mask=known)
