"""What every backbone declares, and the registry that maps ``model.name`` to a backbone.

A backbone is an ``nn.Module`` called as ``net(z_t, logsnr, cond) -> output`` (the denoiser
contract, DESIGN.md section 3) with a :attr:`spec` property returning a :class:`BackboneSpec`:
what it consumes and what it gives back. Code outside ``models/`` (trainer, spaces, pipelines,
the CLI) reads the spec, never a backbone's config or private fields.

A new backbone is one file in ``models/`` holding its config dataclass and its module, plus one
:func:`register_backbone` call (kinema's own are registered in ``models/__init__.py``). The
config section named by the registration (``model.<section>``) is then selected by
``model.name`` and checked when the config loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

# Conditioning fields (kinema.conditioning.Conditioning) a backbone may read.
CONDITIONING_FIELDS = ("text", "class_labels", "context", "lowres", "lowres_logsnr", "fps", "guidance_weight",
                       "frame_segments", "self_cond")


def with_estimate(z: Tensor, x_hat: Optional[Tensor], enabled: bool, where: str) -> Tensor:
    """A self-conditioned backbone's input (Chen et al. 2022, "Analog Bits", section 3): ``[z, x_hat]`` on
    channels, ``x_hat`` (``cond.self_cond``, the previous estimate of the clean z) zeros when None ("no
    estimate yet", their Algorithm 1). Without self-conditioning (``enabled`` False) ``z`` itself, and an
    estimate is refused, naming ``where`` (the config key that turns it on)."""
    if not enabled:
        if x_hat is not None:
            raise ValueError(f"cond.self_cond is set but this backbone was built without self-conditioning ({where}=false)")
        return z
    if x_hat is None:
        x_hat = torch.zeros_like(z)
    elif x_hat.shape != z.shape:
        raise ValueError(f"cond.self_cond must have z's shape {tuple(z.shape)}, got {tuple(x_hat.shape)}")
    return torch.cat([z, x_hat.to(z.dtype)], dim=1)


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone consumes and produces.

    ``in_channels``: channels of z_t (the space's channels); ``out_channels``: channels of the
    output (same as z for the eps / x / v parameterizations); ``extra_in_channels``: channels the
    backbone takes from ``cond`` besides z (low-resolution video, context frames + mask);
    ``text_dim`` (0: none) and ``num_classes`` (0: none); ``size_multiple``: H and W must be
    multiples of it; ``frame_multiple`` / ``min_frames``: the same for F; ``reads``: the
    :data:`CONDITIONING_FIELDS` it uses (``frame_segments`` = it honours joint image-video masks;
    ``self_cond`` = it takes a previous estimate x_hat of z's shape, so the objective trains it with
    self-conditioning and the sampling pipelines feed it the last estimate).
    """

    in_channels: int
    out_channels: int
    extra_in_channels: int = 0
    text_dim: int = 0
    num_classes: int = 0
    size_multiple: int = 1
    frame_multiple: int = 1
    min_frames: int = 1
    reads: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.reads) - set(CONDITIONING_FIELDS))
        if unknown:
            raise ValueError(f"BackboneSpec.reads has unknown fields {unknown}; valid: {CONDITIONING_FIELDS}")

    def check_video_shape(self, frames: int, height: int, width: int, what: str = "video") -> None:
        """Raise a ValueError naming the constraint when a ``frames x height x width`` input cannot work."""
        m = self.size_multiple
        if height % m or width % m:
            (dh, uh), (dw, uw) = _round(height, m, m), _round(width, m, m)
            fix = f"pad to {uh}x{uw}" if min(dh, dw) < m else f"crop to {dh}x{dw} or pad to {uh}x{uw}"
            raise ValueError(f"this backbone needs height and width divisible by {m}; the {what} is {height}x{width} "
                             f"({fix})")
        if frames < self.min_frames or frames % self.frame_multiple:
            down, up = _round(frames, self.frame_multiple, self.min_frames)
            fix = f"pad to {up}" if down < self.min_frames else f"trim to {down} or pad to {up}"
            raise ValueError(f"this backbone needs at least {self.min_frames} frames, a multiple of "
                             f"{self.frame_multiple}; the {what} has {frames} ({fix})")


def _round(value: int, multiple: int, minimum: int) -> tuple[int, int]:
    """(the largest multiple of ``multiple`` <= ``value``, the smallest one >= max(``value``, ``minimum``))."""
    return value // multiple * multiple, -(-max(value, minimum) // multiple) * multiple


@dataclass(frozen=True)
class Registration:
    """A registered backbone: its config dataclass, the module built from it, the config section it
    lives under (``model.<section>``) and an optional ``upgrade_state(state) -> state`` that renames
    the tensors of checkpoints written before the current checkpoint format (format 1). ``kind``:
    ``denoiser`` (the denoiser contract) or ``autoencoder`` (a
    :class:`~kinema.models.autoencoder.VideoAutoencoder`, trained with ``train.objective=autoencoder``
    and used as the frozen part of a latent space; it cannot sample)."""

    name: str
    config_cls: type
    model_cls: Callable[..., nn.Module]
    section: str
    upgrade_state: Optional[Callable[[dict], dict]] = None
    kind: str = "denoiser"


_REGISTRY: dict[str, Registration] = {}
KINDS = ("denoiser", "autoencoder")


def register_backbone(name: str, config_cls: type, model_cls: Callable[..., nn.Module], *,
                      section: Optional[str] = None, upgrade_state: Optional[Callable[[dict], dict]] = None,
                      replace: bool = False, kind: str = "denoiser") -> Registration:
    """Register backbone ``name`` (built as ``model_cls(config_cls(...))``), configured under
    ``model.<section>`` (default: ``name``). Registering a taken name is an error unless ``replace``."""
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"backbone {name!r}: its config must be a dataclass, got {config_cls!r}")
    if kind not in KINDS:
        raise ValueError(f"backbone {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a backbone named {name!r} is already registered")
    section = section or name
    taken = {r.section: r.name for r in _REGISTRY.values() if r.name != name}
    if section in taken or section in ("name", "text", "space", "autoencoder"):
        raise ValueError(f"backbone {name!r}: config section model.{section} is already used"
                         + (f" by backbone {taken[section]!r}" if section in taken else ""))
    entry = Registration(name, config_cls, model_cls, section, upgrade_state, kind)
    _REGISTRY[name] = entry
    return entry


def unregister_backbone(name: str) -> None:
    """Remove a registration (tests register throwaway backbones)."""
    _REGISTRY.pop(name, None)


def backbone_names(kind: Optional[str] = None) -> list[str]:
    """Registered names (of one ``kind`` when given)."""
    return sorted(n for n, r in _REGISTRY.items() if kind is None or r.kind == kind)


def backbone_entry(name: str) -> Registration:
    """The registration of ``name``, or a ValueError listing the registered names."""
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model.name {name!r}{hint} Registered backbones: {', '.join(backbone_names())}")
    return _REGISTRY[name]


def build_backbone(name: str, cfg) -> nn.Module:
    """The backbone registered as ``name``, built from its config dataclass ``cfg``."""
    entry = backbone_entry(name)
    if not isinstance(cfg, entry.config_cls):
        raise TypeError(f"backbone {name!r} is built from a {entry.config_cls.__name__}, got {type(cfg).__name__}")
    return entry.model_cls(cfg)


def backbone_spec(module: nn.Module) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone, or of the backbone inside a wrapper that exposes it."""
    spec = getattr(module, "spec", None)
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"{type(module).__name__} declares no BackboneSpec (a backbone needs a `spec` property)")
    return spec


__all__ = ["BackboneSpec", "CONDITIONING_FIELDS", "Registration", "backbone_entry", "backbone_names",
           "backbone_spec", "build_backbone", "register_backbone", "unregister_backbone"]
