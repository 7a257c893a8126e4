"""Backbones and their blocks. No training code, no data code (DESIGN.md section 2).

Every backbone follows the denoiser contract ``net(z_t, logsnr, cond) -> output``. A new backbone is
one file plus one entry in :data:`MODELS`.
"""

from __future__ import annotations

from kinema.models.unet import UNet3D, UNetConfig

# name -> (config dataclass, model class)
MODELS = {"unet3d": (UNetConfig, UNet3D)}


def build_model(name: str, cfg):
    """The backbone registered as ``name``, built from its config dataclass ``cfg``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
    cfg_cls, model_cls = MODELS[name]
    if not isinstance(cfg, cfg_cls):
        raise TypeError(f"model {name!r} is built from a {cfg_cls.__name__}, got {type(cfg).__name__}")
    return model_cls(cfg)


__all__ = ["MODELS", "UNet3D", "UNetConfig", "build_model"]
