"""Build the pieces a config describes: backbone, schedule, device; and load them back from a
checkpoint. Shared by training and every sampling pipeline."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from kinema.config import KinemaConfig
from kinema.diffusion.schedule import Schedule, resolution_shift
from kinema.models import build_model as _build_backbone
from kinema.models.text import TextConditioned, build_text_encoder


def build_model(cfg: KinemaConfig) -> nn.Module:
    """The backbone named by ``cfg.model.name`` with its section of the config; with a text encoder
    (``model.text.encoder`` builtin / transformers) the backbone and encoder together as a
    :class:`~kinema.models.text.TextConditioned` (same ``net(z_t, logsnr, cond)`` contract)."""
    net = _build_backbone(cfg.model.name, cfg.model.unet)
    encoder = build_text_encoder(cfg.model.text)
    text_dim = cfg.model.unet.text_dim
    if encoder is None:
        if text_dim > 0:
            raise ValueError(f"model.unet.text_dim={text_dim} but model.text.encoder=none; choose "
                             f"model.text.encoder=builtin or transformers (or set model.unet.text_dim=0)")
        return net
    if encoder.dim != text_dim:
        raise ValueError(f"model.unet.text_dim={text_dim} but the {cfg.model.text.encoder} text encoder gives "
                         f"{encoder.dim}-dim embeddings; set model.unet.text_dim={encoder.dim}")
    return TextConditioned(net, encoder)


def build_schedule(cfg: KinemaConfig) -> Schedule:
    """The noise schedule of ``cfg.diffusion``; shifted cosine uses the data resolution."""
    d = cfg.diffusion
    if d.schedule == "shifted_cosine":
        return Schedule("shifted_cosine", d.logsnr_min, d.logsnr_max,
                        resolution_shift(cfg.data.size, d.shift_base_resolution))
    return Schedule(d.schedule, d.logsnr_min, d.logsnr_max)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; an unavailable explicit device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available on this machine")
    return device


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16 autocast on CUDA for ``auto``/``bf16``; None (fp32) otherwise."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; choose auto, bf16 or fp32")
    if precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """A ``torch.autocast`` context for ``dtype``, or a no-op for fp32."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_from_checkpoint(path: str | Path, *, ema: bool = True, device: str | torch.device = "auto"):
    """(model in eval mode on ``device``, its resolved config, the checkpoint directory)."""
    from kinema.train.checkpoint import load_checkpoint_config, load_model_state, load_weights, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    cfg = load_checkpoint_config(ckpt)  # safe YAML; errors name the file
    model = build_model(cfg)
    load_model_state(model, load_weights(ckpt, ema=ema), ckpt)
    dev = resolve_device(device) if isinstance(device, str) else device
    return model.to(dev).eval(), cfg, ckpt
