"""Checks of user-given values, made before any work starts: argparse ``type=`` helpers for the
command line, a range check of the training config, and the finite-value checks that keep NaN/inf
out of written videos and reported metrics (issue 11).

Each failure is one plain line naming the value and the valid range.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable, Optional


class NonFiniteError(ValueError):
    """Values that must be finite (samples, weights, features) are NaN or infinite."""


# ---- argparse types ----------------------------------------------------------------------------------


def int_at_least(low: int) -> Callable[[str], int]:
    """``type=`` for an integer option that must be >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
positive_int.__name__ = "positive integer"


def finite_float(text: str) -> float:
    """``type=`` for a float option that must be finite (no nan / inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def log_snr_bound(text: str) -> Optional[float]:
    """``type=`` for one end of a log-SNR interval: a finite number, or ``none`` for an open end."""
    if text.strip().lower() in ("none", "null"):
        return None
    return finite_float(text)


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def video_out_path(text: str) -> str:
    """``type=`` for an output video path: the extension is checked before any sampling."""
    from kinema.data.io import WRITE_EXTENSIONS

    ext = Path(text).suffix.lower()
    if ext not in WRITE_EXTENSIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown video extension {ext or '(none)'}; "
                                         f"use one of {', '.join(WRITE_EXTENSIONS)}")
    return text


# ---- config ranges -----------------------------------------------------------------------------------

# String options are typed Literal[...] in kinema.config and checked when the config loads.
_AT_LEAST = {
    "train.steps": 1, "train.batch_size": 1, "train.grad_accum": 1, "train.log_every": 1,
    "train.ckpt_every": 0, "train.keep_last": 0, "train.sample_every": 0, "train.sample_num": 1,
    "train.sample_steps": 1, "train.warmup_steps": 0, "data.num_frames": 1, "data.size": 1,
    "data.frame_stride": 1, "data.render_scale": 1, "data.num_workers": 0, "sample.steps": 1, "sample.fps": 1,
}
_FINITE = ("train.lr", "train.weight_decay", "train.grad_clip", "train.ema_decay", "train.beta1", "train.beta2",
           "sample.guidance", "sample.eta", "diffusion.logsnr_min", "diffusion.logsnr_max")


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            return None
        node = getattr(node, part)
    return node


def check_train_config(cfg) -> None:
    """Raise a ValueError naming the first out-of-range key of a resolved training config (before
    the run directory is touched, so a bad value leaves nothing behind)."""
    from kinema.config import ConfigError

    for key, low in _AT_LEAST.items():
        value = _get(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"config key '{key}' must be >= {low}; got {value}")
    for key in _FINITE:
        value = _get(cfg, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be finite; got {value}")
    minutes = _get(cfg, "train.minutes")
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"config key 'train.minutes' must be a finite number > 0 (or null); got {minutes}")
    if _get(cfg, "train.lr_decay_over") == "minutes":
        if minutes is None:
            raise ConfigError("train.lr_decay_over=minutes decays the learning rate over the train.minutes budget, "
                              "but train.minutes is null; set train.minutes or use train.lr_decay_over=steps")
        if _get(cfg, "train.lr_schedule") != "cosine":
            raise ConfigError(f"train.lr_decay_over=minutes needs train.lr_schedule=cosine (there is nothing to decay "
                              f"with {_get(cfg, 'train.lr_schedule')!r})")
    corr = _get(cfg, "diffusion.frame_noise_corr")
    if corr is not None and not 0.0 <= corr < 1.0:
        raise ConfigError(f"config key 'diffusion.frame_noise_corr' must be in [0, 1); got {corr}")
    lr = _get(cfg, "train.lr")
    if lr is not None and lr <= 0:
        raise ConfigError(f"config key 'train.lr' must be > 0; got {lr}")


# ---- finite values -----------------------------------------------------------------------------------


def first_nonfinite(state: dict) -> Optional[str]:
    """Name of the first floating tensor of a state dict holding NaN/inf (None when all are finite)."""
    import torch

    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def require_finite(x, what: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` when tensor / array ``x`` holds NaN or inf."""
    import numpy as np
    import torch

    bad = (not torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else (not np.isfinite(np.asarray(x)).all())
    if bad:
        raise NonFiniteError(f"{what} contain NaN/inf values{'; ' + hint if hint else ''}")
