"""Training inputs of context-conditioned (prediction) models.

VDM (Ho et al. 2022, section 3.1) notes that a model trained with known frames as explicit
conditioning is an alternative to guidance at sampling time; Video LDM (Blattmann et al. 2023,
section 3.3) trains its prediction model on 0-2 masked context frames and uses it for long videos
and (with context at both ends) for interpolation. kinema draws, per training item, a random
number of clean known frames: none (the model stays an unconditional model, which is also the
null for classifier-free guidance over the context), leading frames (prediction / extension) or
frames at both ends. The network gets them through ``Conditioning.context`` +
``context_mask``; the loss is taken on the unknown frames only.

Video LDM's temporal interpolation model (section 3.2: "predict three frames between two given key
frames", a T -> 4T frame-rate model) uses the same masking-conditioning with a fixed pattern: every k-th
frame of the window (positions 0, k, 2k, ...) is known and the k - 1 frames between each pair are
generated (``key_every = k``; :func:`key_frame_mask`).

Frames are counted in the model's space: the frames of the tensor the model sees (latent frames for a
latent model; with a frame-wise autoencoder, ``temporal_factor`` 1, the same count as pixel frames).
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
    key_every: int = 0  # 0: off. k >= 2: an interpolation model, frames 0, k, 2k, ... known (instead of max_frames)

    def __post_init__(self) -> None:
        if self.max_frames < 0:
            raise ValueError(f"train.context.max_frames must be >= 0, got {self.max_frames}")
        for name in ("none_prob", "interpolation_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.context.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.key_every < 0 or self.key_every == 1:
            raise ValueError(f"train.context.key_every must be 0 (off) or >= 2 (every k-th frame known, k - 1 "
                             f"generated between), got {self.key_every}")
        if self.key_every and self.max_frames:
            raise ValueError(f"train.context.key_every={self.key_every} (an interpolation model) and max_frames="
                             f"{self.max_frames} (a prediction model) are both set; set one of them to 0")

    @property
    def enabled(self) -> bool:
        """Does the model take context frames (a prediction or an interpolation model)?"""
        return self.max_frames > 0 or self.key_every > 0


def check_context_config(cfg: ContextConfig, num_frames: int, in_channels: int, extra_in_channels: int,
                         frames_name: str = "data.num_frames") -> None:
    """Errors that name the offending key when a context config cannot work with the model / data.
    ``num_frames``: the frames of a training item in the model's space (latent frames for a latent
    model; ``frames_name`` says how they were obtained, for messages)."""
    ContextConfig.__post_init__(cfg)  # a config changed after construction
    if not cfg.enabled:
        return
    if cfg.max_frames >= num_frames:
        raise ValueError(f"train.context.max_frames={cfg.max_frames} must be below {frames_name}={num_frames} "
                         f"(at least one frame has to be generated)")
    if cfg.key_every and ((num_frames - 1) % cfg.key_every or num_frames <= cfg.key_every):
        k, n = cfg.key_every, num_frames
        raise ValueError(f"train.context.key_every={k} needs {frames_name} = 1 + {k} m (m >= 1, key frames at both "
                         f"ends), got {n}; use {max(1, (n - 1) // k) * k + 1} or {(max(1, (n - 1) // k) + 1) * k + 1}")
    if extra_in_channels != in_channels + 1:
        key = f"max_frames={cfg.max_frames}" if cfg.max_frames else f"key_every={cfg.key_every}"
        raise ValueError(f"train.context.{key} needs a backbone with extra_in_channels = in_channels + 1 = "
                         f"{in_channels + 1} (context frames and their mask; model.unet.extra_in_channels, "
                         f"model.walt.extra_in_channels or model.video_ldm.extra_in_channels), got {extra_in_channels}")


def key_frame_mask(frames: int, every: int, device=None) -> Tensor:
    """``[frames]`` bool, True at the key frames 0, every, 2 every, ... of an interpolation window (Video LDM
    section 3.2, with ``every = 4``: three generated frames between each pair of key frames)."""
    return torch.arange(frames, device=device) % every == 0


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
    (``cond, None``) when the config is off (``cfg.enabled`` False)."""
    if not cfg.enabled:
        return cond, None
    if cfg.key_every:
        return add_key_frames(x, cond, cfg, generator, rand)
    clip_frames = None
    if cond.frame_segments is not None:  # appended images (other segments) are never context
        clip_frames = (cond.frame_segments == cond.frame_segments[:, :1]).sum(1)
    known = sample_context_mask(x.shape[0], x.shape[2], cfg, generator=generator, device=x.device, rand=rand,
                                clip_frames=clip_frames)
    return with_context(cond, x, known), (~known).to(x.dtype)


def add_key_frames(x: Tensor, cond: Conditioning, cfg: ContextConfig, generator: Optional[torch.Generator] = None,
                   rand: Optional[Callable[[int], Tensor]] = None) -> tuple[Conditioning, Tensor]:
    """:func:`add_context` for an interpolation model (``cfg.key_every = k``): the key frames of
    :func:`key_frame_mask` are known, except for a ``cfg.none_prob`` share of items that get none (the
    null of classifier-free guidance over the context). Joint items (appended images) are refused: key
    frames are positions within one clip."""
    if cond is not None and cond.frame_segments is not None:
        raise ValueError("train.context.key_every (an interpolation model) trains on clips only; set "
                         "data.image_fraction=0")
    b, f = x.shape[0], x.shape[2]
    u = rand(b) if rand is not None else torch.rand(b, generator=generator, device=x.device)
    known = key_frame_mask(f, cfg.key_every, x.device)[None] & (u >= cfg.none_prob).to(x.device)[:, None]  # [B, F]
    return with_context(cond, x, known), (~known).to(x.dtype)


class ContextFrames:
    """Objective hook (:class:`~kinema.diffusion.objective.DiffusionObjective`): :func:`add_context` with
    the objective's rank-aware draws; a no-op when the config is off (``cfg.enabled`` False)."""

    def __init__(self, cfg: ContextConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: Tensor, cond: Conditioning, rng) -> tuple[Conditioning, Optional[Tensor]]:
        return add_context(x, cond, self.cfg, rand=rng.uniform)
