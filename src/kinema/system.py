"""A system: named parts built from one config, and the builders training and sampling share.

Below both ``train/`` and ``pipelines/`` (DESIGN.md section 2): ``cli -> train / pipelines ->
system + checkpoint -> models + diffusion``. A :class:`System` is

- ``cfg``: the resolved config;
- ``parts``: named :class:`Part` s. ``model`` is the trained network (the backbone named by
  ``model.name``, with a built-in text encoder when configured); frozen parts (a ``transformers``
  text encoder today; a teacher, an autoencoder or a pretrained image model next) are recorded in
  checkpoints by path and content hash, not saved;
- ``spec``: the backbone's :class:`~kinema.models.backbone.BackboneSpec`;
- ``space``: where diffusion runs (:mod:`kinema.spaces`).

:func:`build_objective` turns the config into the training objective (:mod:`kinema.diffusion.objective`),
:func:`load_system` rebuilds a system from a checkpoint.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from kinema import checkpoint as ckpt_io
from kinema.config import KinemaConfig
from kinema.diffusion.context import ContextFrames, check_context_config
from kinema.diffusion.guidance import GuidanceDropout
from kinema.diffusion.objective import DiffusionObjective
from kinema.diffusion.schedule import Schedule, resolution_shift
from kinema.models import backbone_entry, backbone_spec, build_backbone
from kinema.models.text import TextConditioned, TransformersTextEncoder, build_text_encoder
from kinema.spaces import build_space

MODEL = "model"  # the name of the trained part


def build_model(cfg: KinemaConfig) -> nn.Module:
    """The backbone named by ``cfg.model.name`` with its section of the config; with a text encoder
    (``model.text.encoder`` builtin / transformers) the backbone and encoder together as a
    :class:`~kinema.models.text.TextConditioned` (same ``net(z_t, logsnr, cond)`` contract)."""
    net = build_backbone(cfg.model.name, cfg.model.backbone)
    encoder = build_text_encoder(cfg.model.text)
    text_dim = backbone_spec(net).text_dim
    section = f"model.{config_section(cfg)}"
    if encoder is None:
        if text_dim > 0:
            raise ValueError(f"the backbone takes text ({section}.text_dim={text_dim}) but model.text.encoder=none; "
                             f"choose model.text.encoder=builtin or transformers (or set {section}.text_dim=0)")
        return net
    if encoder.dim != text_dim and not hasattr(cfg.model.backbone, "text_dim"):  # e.g. a pretrained image model's
        raise ValueError(f"the {cfg.model.name} backbone takes {text_dim}-dim text but the {cfg.model.text.encoder} "
                         f"text encoder gives {encoder.dim}-dim embeddings; use an encoder of width {text_dim}")
    if encoder.dim != text_dim:
        raise ValueError(f"{section}.text_dim={text_dim} but the {cfg.model.text.encoder} text encoder gives "
                         f"{encoder.dim}-dim embeddings; set {section}.text_dim={encoder.dim}")
    return TextConditioned(net, encoder)


def config_section(cfg: KinemaConfig) -> str:
    """The YAML key of the backbone's config section (``unet`` for ``unet3d``), for messages."""
    return backbone_entry(cfg.model.name).section


def build_schedule(cfg: KinemaConfig) -> Schedule:
    """The noise schedule of ``cfg.diffusion``; shifted cosine uses the data resolution."""
    d = cfg.diffusion
    if d.schedule == "shifted_cosine":
        return Schedule("shifted_cosine", d.logsnr_min, d.logsnr_max,
                        resolution_shift(cfg.data.size, d.shift_base_resolution))
    return Schedule(d.schedule, d.logsnr_min, d.logsnr_max)


def build_objective(cfg: KinemaConfig) -> DiffusionObjective:
    """The training objective of a config: the diffusion loss of ``cfg.diffusion`` with the
    conditioning hooks the config turns on (classifier-free guidance dropout, context frames)."""
    d, t = cfg.diffusion, cfg.train
    hooks = (GuidanceDropout(t.cond_dropout), ContextFrames(t.context))
    return DiffusionObjective(build_schedule(cfg), d.parameterization, d.weighting, d.min_snr_gamma, d.t_sampling,
                              hooks)


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


# ---- parts and systems ----------------------------------------------------------------------------


@dataclass
class Part:
    """One named part of a system. A trainable part is in the optimizer and the EMA (its parameters
    with ``requires_grad``; frozen sub-layers inside it are saved but not trained) and saved in every
    checkpoint; a frozen part comes from ``source`` (a local path) and is recorded by path and content
    hash (``sha256``), not saved."""

    module: Any
    trainable: bool
    source: Optional[str] = None
    sha256: Optional[str] = None

    def manifest(self) -> dict:
        entry: dict = {"trainable": self.trainable}
        if self.source is not None:
            entry["source"] = self.source
        if self.sha256 is not None:
            entry["sha256"] = self.sha256
        return entry


@dataclass
class System:
    """A config, its named parts, the backbone's spec and the space (see the module docstring)."""

    cfg: KinemaConfig
    parts: dict[str, Part] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if MODEL not in self.parts:
            raise ValueError(f"a system needs a part named {MODEL!r}; got {sorted(self.parts)}")
        self.spec = backbone_spec(self.model)
        self.space = build_space(self.cfg, self.spec, self.parts)

    @property
    def model(self) -> nn.Module:
        return self.parts[MODEL].module

    def trainable(self) -> dict[str, Part]:
        return {k: p for k, p in self.parts.items() if p.trainable}

    def frozen(self) -> dict[str, Part]:
        return {k: p for k, p in self.parts.items() if not p.trainable}

    def with_model(self, model: nn.Module) -> "System":
        """The same system with another module as its ``model`` part (e.g. a copy holding EMA weights)."""
        parts = dict(self.parts)
        parts[MODEL] = Part(model, parts[MODEL].trainable)
        return System(self.cfg, parts)

    def manifest(self) -> dict:
        """The parts section of a checkpoint's manifest (see :mod:`kinema.checkpoint`)."""
        return {name: part.manifest() for name, part in self.parts.items()}

    @property
    def is_context_model(self) -> bool:
        """Trained with context frames (``train.context.max_frames > 0``)?"""
        return self.cfg.train.context.max_frames > 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.model, TextConditioned):
            raise ValueError("this model is not text-conditional (model.text.encoder=none); --prompt needs a model "
                             "trained with a text encoder")
        return self.model.encode_text(captions)

    def to(self, device) -> "System":
        self.model.to(device)
        return self


def named_trainable_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters of a trainable part that train (``requires_grad``), by name."""
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def build_system(cfg: KinemaConfig, *, frozen_hashes: bool = True) -> System:
    """The parts a config describes, freshly initialized (frozen parts loaded from their paths). With
    ``frozen_hashes`` the content hash of every frozen part's source is computed (for the manifest)."""
    model = build_model(cfg)
    spec = backbone_spec(model)
    check_context_config(cfg.train.context, cfg.data.num_frames, spec.in_channels, spec.extra_in_channels)
    parts = {MODEL: Part(model, trainable=True)}
    encoder = model.encoder() if isinstance(model, TextConditioned) else None
    if isinstance(encoder, TransformersTextEncoder):
        source = str(Path(cfg.model.text.path).expanduser().resolve())
        parts["text_encoder"] = Part(encoder, trainable=False, source=source,
                                     sha256=ckpt_io.hash_path(source) if frozen_hashes else None)
    for name, (module, source) in backbone_frozen_parts(model).items():  # e.g. Video LDM's image model
        parts[name] = Part(module, trainable=False, source=source,
                           sha256=ckpt_io.hash_path(source) if frozen_hashes else None)
    return System(cfg, parts)


def backbone_frozen_parts(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The frozen pretrained modules a backbone holds inside itself (``frozen_parts()``: name -> (module,
    local source path); Video LDM's image model), recorded as frozen parts; {} for other backbones."""
    net = model.net if isinstance(model, TextConditioned) else model
    declare = getattr(net, "frozen_parts", None)
    return declare() if callable(declare) else {}


def load_system(path: str | Path, *, ema: bool = True, device: str | torch.device = "auto") -> tuple[System, Path]:
    """(system in eval mode on ``device``, the checkpoint directory) from a checkpoint or run directory.
    Frozen parts are checked against the hashes the checkpoint recorded."""
    ckpt = ckpt_io.resolve_checkpoint(path)
    cfg = ckpt_io.load_checkpoint_config(ckpt)  # safe YAML; errors name the file
    system = build_system(cfg)
    manifest = ckpt_io.load_manifest(ckpt)
    ckpt_io.check_frozen_parts(manifest, system.manifest(), ckpt)
    state = ckpt_io.load_part_state(ckpt, MODEL, ema=ema, manifest=manifest)
    ckpt_io.load_model_state(system.model, state, ckpt)
    dev = resolve_device(device) if isinstance(device, str) else device
    system.model.to(dev).eval()
    return system, ckpt


__all__ = ["MODEL", "Part", "System", "autocast", "autocast_dtype", "build_model", "build_objective",
           "build_schedule", "build_system", "load_system", "named_trainable_parameters", "resolve_device"]
