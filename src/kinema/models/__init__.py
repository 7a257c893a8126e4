"""Backbones and their blocks. No training code, no data code (DESIGN.md section 2)."""

from __future__ import annotations

from kinema.models.unet import UNet3D, UNetConfig

# name -> (config class, model class); a new backbone is one file plus one entry here.
MODELS = {"unet3d": (UNetConfig, UNet3D)}


def build_model(name: str, cfg):
    """Instantiate the backbone registered as ``name`` with its config dataclass ``cfg``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    cfg_cls, model_cls = MODELS[name]
    if not isinstance(cfg, cfg_cls):
        raise TypeError(f"model {name!r} needs a {cfg_cls.__name__}, got {type(cfg).__name__}")
    return model_cls(cfg)


__all__ = ["MODELS", "UNet3D", "UNetConfig", "build_model"]
