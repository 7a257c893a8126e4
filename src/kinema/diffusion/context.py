"""Training inputs of context-conditioned (prediction) models.

VDM (Ho et al. 2022, section 3.1) notes that a model trained with known frames as explicit
conditioning is an alternative to guidance at sampling time; Video LDM (Blattmann et al. 2023,
section 3.3) trains its prediction model on 0-2 masked context frames and uses it for long videos
and (with context at both ends) for interpolation. kinema draws, per training item, a random
number of clean known frames: none (the model stays an unconditional model, which is also the
null for classifier-free guidance over the context), leading frames (prediction / extension) or
frames at both ends (interpolation). The network gets them through ``Conditioning.context`` +
``context_mask``; the loss is taken on the unknown frames only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from kinema.conditioning import Conditioning, with_context


@dataclass
class ContextConfig:
    """Context-conditioned (prediction) models (``train.context`` in the config): each training item
    gets a random number of clean known frames in ``Conditioning.context`` + ``context_mask`` (the
    backbone needs ``extra_in_channels = in_channels + 1``); the loss skips the known frames."""

    max_frames: int = 0  # 0: off. Else each item gets 0..max_frames known frames (< data.num_frames)
    none_prob: float = 0.1  # share of items with no known frames: the model is also unconditional
    interpolation_prob: float = 0.25  # share of conditioned items whose known frames are split over both ends


def check_context_config(cfg: ContextConfig, num_frames: int, in_channels: int, extra_in_channels: int) -> None:
    """Errors that name the offending key when a context config cannot work with the model / data."""
    if cfg.max_frames < 0:
        raise ValueError(f"train.context.max_frames must be >= 0, got {cfg.max_frames}")
    for name in ("none_prob", "interpolation_prob"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"train.context.{name} must be in [0, 1], got {getattr(cfg, name)}")
    if cfg.max_frames == 0:
        return
    if cfg.max_frames >= num_frames:
        raise ValueError(f"train.context.max_frames={cfg.max_frames} must be below data.num_frames={num_frames} "
                         f"(at least one frame has to be generated)")
    if extra_in_channels != in_channels + 1:
        raise ValueError(f"train.context.max_frames={cfg.max_frames} needs a backbone with extra_in_channels = "
                         f"in_channels + 1 = {in_channels + 1} (context frames and their mask; for the U-Net "
                         f"model.unet.extra_in_channels), got {extra_in_channels}")


def sample_context_mask(batch: int, frames: int, cfg: ContextConfig, *, generator: Optional[torch.Generator] = None,
                        device=None, clip_frames: Optional[Tensor] = None,
                        rand: Optional[Callable[[int], Tensor]] = None) -> Tensor:
    """Known-frame mask ``[batch, frames]`` bool, drawn per item: none with probability
    ``cfg.none_prob``; otherwise k ~ U{1..max_frames} known frames, all leading (prediction) or, with
    probability ``cfg.interpolation_prob`` and k >= 2, k1 ~ U{1..k-1} leading and k - k1 trailing
    (interpolation). ``clip_frames [batch]`` (long) is the length of each item's clip when images are
    appended after it (joint training); trailing context ends there. ``rand(n) -> [n]`` U(0, 1) draws
    replace ``torch.rand(n, generator=generator)`` (the trainer passes its rank-aware global draws)."""
    def uniform(n):
        return rand(n) if rand is not None else torch.rand(n, generator=generator, device=device)

    k = 1 + (uniform(batch) * cfg.max_frames).long().clamp_max(cfg.max_frames - 1)  # [B] in 1..max
    k = torch.where(uniform(batch) < cfg.none_prob, torch.zeros_like(k), k)
    split = (uniform(batch) < cfg.interpolation_prob) & (k >= 2)
    lead_split = 1 + (uniform(batch) * (k - 1).clamp_min(1)).long().clamp_max((k - 2).clamp_min(0))
    lead = torch.where(split, lead_split, k)  # [B]
    trail = k - lead
    end = clip_frames.to(device) if clip_frames is not None else torch.full_like(k, frames)
    pos = torch.arange(frames, device=device)[None]  # [1, F]
    return (pos < lead[:, None]) | ((pos >= (end - trail)[:, None]) & (pos < end[:, None]))


def add_context(x: Tensor, cond: Conditioning, cfg: ContextConfig, generator: Optional[torch.Generator] = None,
                rand: Optional[Callable[[int], Tensor]] = None) -> tuple[Conditioning, Optional[Tensor]]:
    """The trainer's one hook for context models: ``cond`` with random known frames of ``x
    [B, C, F, H, W]`` and the loss's ``frame_weight [B, F]`` (0 on known frames). A no-op
    (``cond, None``) when ``cfg.max_frames == 0``."""
    if cfg.max_frames == 0:
        return cond, None
    clip_frames = None
    if cond.frame_segments is not None:  # appended images (other segments) are never context
        clip_frames = (cond.frame_segments == cond.frame_segments[:, :1]).sum(1)
    known = sample_context_mask(x.shape[0], x.shape[2], cfg, generator=generator, device=x.device, rand=rand,
                                clip_frames=clip_frames)
    return with_context(cond, x, known), (~known).to(x.dtype)


class ContextFrames:
    """Objective hook (:class:`~kinema.diffusion.objective.DiffusionObjective`): :func:`add_context` with
    the objective's rank-aware draws; a no-op when ``cfg.max_frames == 0``."""

    def __init__(self, cfg: ContextConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: Tensor, cond: Conditioning, rng) -> tuple[Conditioning, Optional[Tensor]]:
        return add_context(x, cond, self.cfg, rand=rng.uniform)
