"""Conditioning embedders that any backbone composes (DESIGN.md section 3, "Conditioning").

:class:`ConditioningEmbedding` turns the noise level and the vector-valued fields of a
:class:`~kinema.conditioning.Conditioning` into one ``[B, emb_dim]`` embedding, the sum of:

- the noise level (log-SNR, :class:`~kinema.models.blocks.NoiseLevelEmbedding`; always);
- a class label (:class:`ClassEmbedding`; a negative label or none is a learned null label);
- pooled text (:class:`TextEmbedding`: LayerNorm'ed token embeddings, masked mean, projected; the
  normalized tokens also serve cross-attention; Imagen, Saharia et al. 2022, section 2.1);
- optional scalars (:data:`SCALAR_CONDITIONS`): the log-SNR of the augmentation noise on a
  low-resolution input (Imagen Video's conditioning augmentation, Ho et al. 2022, section 2.5 /
  Cascaded Diffusion Models, Ho et al. 2021, section 4.1), the guidance weight of a guided
  distilled student (Meng et al. 2023, "On Distillation of Guided Diffusion Models", section 3),
  frames per second (Video LDM, Blattmann et al. 2023, appendix). Their output layers start at
  zero, so turning one on leaves a fresh model's function unchanged.

:func:`conditioning_channels` builds the channels a backbone concatenates to z: the low-resolution
video brought to z's frames and size (:func:`kinema.resize.resize_video`) and the known context
frames with their mask.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from kinema.models.blocks import NoiseLevelEmbedding, logsnr_to_position, sinusoidal_embedding
from kinema.resize import resize_video

# name -> (value used when cond leaves the field unset, map onto the ~[0, 1000] range of the sinusoidal features)
SCALAR_CONDITIONS = {
    "lowres_logsnr": (20.0, logsnr_to_position),  # unset: a clean low-resolution input (no augmentation noise)
    "guidance_weight": (0.0, lambda w: 100.0 * w),  # w in [0, ~10]
    "fps": (0.0, lambda fps: 10.0 * fps),  # fps in [0, ~100]
}


class ClassEmbedding(nn.Module):
    """Class label ``[B]`` -> ``[B, emb_dim]``; labels ``< 0`` (``NULL_LABEL``) or no labels at all use
    a learned null embedding (row ``num_classes``), the unconditional input of classifier-free guidance."""

    def __init__(self, num_classes: int, emb_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, emb_dim)

    def forward(self, labels: Optional[Tensor], batch: int, device: torch.device) -> Tensor:
        if labels is None:
            labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        elif labels.device.type == "cpu" and (labels >= self.num_classes).any():  # no host sync on GPU
            raise ValueError(f"class label {int(labels.max())} out of range for num_classes={self.num_classes} "
                             f"(labels 0..{self.num_classes - 1}, or -1 for none)")
        labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
        return self.table(labels)


def pooled_text(text_emb: Tensor, text_mask: Optional[Tensor]) -> Tensor:
    """Mean of the real tokens: ``text_emb [B, L, D]``, ``text_mask [B, L]`` -> ``[B, D]``; 0 for an
    all-False mask (the null text), never NaN."""
    if text_mask is None:
        return text_emb.mean(dim=1)
    m = text_mask.to(text_emb.dtype)[..., None]  # [B, L, 1]
    return (text_emb * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class TextEmbedding(nn.Module):
    """LayerNorm for token embeddings (T5 outputs have large norms) and the pooled-text projection."""

    def __init__(self, text_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.text_dim = text_dim
        self.norm = nn.LayerNorm(text_dim)
        self.pool = nn.Linear(text_dim, emb_dim)

    def forward(self, normalized: Optional[Tensor], mask: Optional[Tensor], batch: int, like: Tensor) -> Tensor:
        """Pooled embedding of already :attr:`norm`'ed tokens; no text = the null text (pooled 0)."""
        pooled = like.new_zeros(batch, self.text_dim) if normalized is None else pooled_text(normalized, mask)
        return self.pool(pooled)


class ScalarEmbedding(nn.Module):
    """A per-item scalar ``[B]`` -> ``[B, emb_dim]``: ``position(values)`` (onto ~[0, 1000]), sinusoidal
    features, then Linear -> SiLU -> Linear (``mlp[-1]`` is the output layer)."""

    def __init__(self, dim: int, emb_dim: int, position: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.dim, self.position = dim, position
        self.mlp = nn.Sequential(nn.Linear(dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, values: Tensor) -> Tensor:
        return self.mlp(sinusoidal_embedding(self.position(values.float()), self.dim))


class ConditioningEmbedding(nn.Module):
    """Noise level + class + pooled text + optional scalars -> ``[B, emb_dim]`` (see the module docstring).

    ``dim``: width of the sinusoidal features; ``scalars``: names from :data:`SCALAR_CONDITIONS`.
    """

    def __init__(self, dim: int, emb_dim: int, *, num_classes: int = 0, text_dim: int = 0,
                 scalars: tuple[str, ...] = ()) -> None:
        super().__init__()
        unknown = sorted(set(scalars) - set(SCALAR_CONDITIONS))
        if unknown:
            raise ValueError(f"unknown scalar conditions {unknown}; valid: {sorted(SCALAR_CONDITIONS)}")
        self.noise = NoiseLevelEmbedding(dim, emb_dim)
        self.classes = ClassEmbedding(num_classes, emb_dim) if num_classes > 0 else None
        self.text = TextEmbedding(text_dim, emb_dim) if text_dim > 0 else None
        self.scalars = nn.ModuleDict({name: ScalarEmbedding(dim, emb_dim, SCALAR_CONDITIONS[name][1])
                                      for name in scalars})

    def zero_init(self) -> None:
        """Zero the output layer of every optional scalar embedding (called from a model's init)."""
        for emb in self.scalars.values():
            nn.init.zeros_(emb.mlp[-1].weight)
            nn.init.zeros_(emb.mlp[-1].bias)

    def normalize_text(self, cond):
        """``cond`` with ``text_emb`` LayerNorm'ed (a copy; ``cond`` is not modified)."""
        if self.text is None or getattr(cond, "text_emb", None) is None:
            return cond
        return dataclasses.replace(cond, text_emb=self.text.norm(cond.text_emb))

    def forward(self, logsnr: Tensor, cond, batch: int) -> Tensor:
        """``cond`` must already be :meth:`normalize_text`'ed. Returns ``[B, emb_dim]``."""
        emb = self.noise(logsnr.expand(batch))
        if self.classes is not None:
            emb = emb + self.classes(getattr(cond, "class_labels", None), batch, emb.device)
        if self.text is not None:
            emb = emb + self.text(getattr(cond, "text_emb", None), getattr(cond, "text_mask", None), batch, emb)
        for name, embed in self.scalars.items():
            values = getattr(cond, name, None)
            if values is None:
                values = emb.new_full((batch,), SCALAR_CONDITIONS[name][0])
            emb = emb + embed(values.to(emb.device).expand(batch))
        return emb


def conditioning_channels(z: Tensor, cond, expected: int, who: str = "backbone") -> Optional[Tensor]:
    """The ``expected`` channels a backbone concatenates to ``z [B, C, F, H, W]``, from ``cond``, in order:

    - ``cond.lowres [B, C, F', H', W']`` brought to z's frames (repeated) and size (bilinear);
    - ``cond.context [B, C, F, H, W]`` times ``cond.context_mask [B, F]``, then the mask as one channel.

    None when ``expected == 0``; a ValueError naming the shapes when ``cond`` gives another count.
    """
    if expected == 0:
        return None
    b, _, f, h, w = z.shape
    parts = []
    lowres = getattr(cond, "lowres", None)
    if lowres is not None:
        parts.append(resize_video(lowres, (h, w), frames=f, antialias=False).to(z.dtype))
    context = getattr(cond, "context", None)
    if context is not None:
        mask = getattr(cond, "context_mask", None)
        if mask is None:
            raise ValueError("cond.context needs cond.context_mask [B, F] (True where a frame is known)")
        mask = mask.to(z.dtype)[:, None, :, None, None].expand(b, 1, f, h, w)  # [B, 1, F, H, W]
        parts += [context.to(z.dtype) * mask, mask]
    got = sum(p.shape[1] for p in parts)
    if got != expected:
        raise ValueError(f"{who} was built with extra_in_channels={expected} but cond gives {got} "
                         f"(lowres: {None if lowres is None else tuple(lowres.shape)}, "
                         f"context: {None if context is None else tuple(context.shape)})")
    return torch.cat(parts, dim=1)


__all__ = ["ClassEmbedding", "ConditioningEmbedding", "SCALAR_CONDITIONS", "ScalarEmbedding", "TextEmbedding",
           "conditioning_channels", "pooled_text"]
