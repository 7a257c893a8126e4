"""Exponential moving average of model weights (Polyak averaging, as used by DDPM / VDM)."""

from __future__ import annotations

import torch
from torch import nn

from kinema.train.distributed import full_tensor, shard_like


class EMA:
    """Shadow copy of a model's trainable parameters (those with ``requires_grad``: frozen layers
    never change, so averaging them would only cost memory), updated as
    shadow <- d * shadow + (1 - d) * param, with d = min(decay, (1 + step) / (10 + step)) when
    ``warmup`` is on (so early averages are not dominated by the random initialization).
    The shadow lives in float32 on the model's device, laid out like the parameters: under FSDP each
    rank averages only its own shards, and :meth:`state_dict` ``(full=True)`` gathers them."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.shadow = {k: v.detach().float().clone() for k, v in model.named_parameters() if v.requires_grad}

    def current_decay(self, step: int) -> float:
        if self.warmup:
            return min(self.decay, (1 + step) / (10 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.current_decay(step)
        state = dict(model.named_parameters())
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        params = [state[k].detach().float() for k in keys]
        torch._foreach_lerp_(shadow, params, 1.0 - d)

    def state_dict(self, full: bool = False) -> dict[str, torch.Tensor]:
        """The averaged tensors; ``full=True`` gathers FSDP shards into whole tensors (a collective:
        every rank must call it)."""
        if not full:
            return dict(self.shadow)
        return {k: full_tensor(v) for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state is missing {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        for k in self.shadow:  # whole tensors from a checkpoint; sharded again under FSDP
            self.shadow[k].copy_(shard_like(state[k], self.shadow[k]))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (cast to each tensor's dtype)."""
        state = dict(model.named_parameters())
        for k, v in self.shadow.items():
            state[k].copy_(v.to(state[k].dtype))
