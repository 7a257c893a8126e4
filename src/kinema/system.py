"""A system: named parts built from one config, and the builders training and sampling share.

Below both ``train/`` and ``pipelines/`` (DESIGN.md section 2): ``cli -> train / pipelines ->
system + checkpoint -> models + diffusion``. A :class:`System` is

- ``cfg``: the resolved config;
- ``parts``: named :class:`Part` s. ``model`` is the trained network (the backbone named by
  ``model.name``, with a built-in text encoder when configured); frozen parts (a ``transformers``
  text encoder; the ``teacher`` of a distillation run; an autoencoder or a pretrained image model
  next) are recorded in checkpoints by path and content hash, not saved. The teacher is a
  training-only part: :func:`load_system` (sampling) neither loads nor checks it;
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
from kinema.autoencoding import DISCRIMINATOR, AutoencoderObjective
from kinema.config import ConfigError, KinemaConfig
from kinema.diffusion.context import ContextFrames, check_context_config
from kinema.diffusion.distill import DistillationObjective
from kinema.diffusion.guidance import GuidanceDropout
from kinema.diffusion.noise import NoisePrior, noise_prior
from kinema.diffusion.objective import SELF_CONDITION_PROB, DiffusionObjective
from kinema.diffusion.schedule import Schedule, resolution_shift
from kinema.diffusion.superres import LowResInput, check_sr_config
from kinema.models import BackboneSpec, backbone_entry, backbone_names, backbone_spec, build_backbone
from kinema.models.autoencoder import VideoAutoencoder
from kinema.models.text import TextConditioned, TransformersTextEncoder, build_text_encoder
from kinema.spaces import build_space

MODEL = "model"  # the name of the trained part
TEACHER = "teacher"  # the frozen teacher of a distillation run (train.objective=distill)
TRAINING_ONLY = (TEACHER, DISCRIMINATOR)  # parts that sampling from a checkpoint does not need
AUTOENCODER = "autoencoder"  # the frozen autoencoder of a latent space


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
    """The noise schedule of ``cfg.diffusion``; the shifted and interpolated cosines use the data resolution."""
    d = cfg.diffusion
    if d.schedule not in ("shifted_cosine", "interpolated_cosine"):
        return Schedule(d.schedule, d.logsnr_min, d.logsnr_max)
    shift = resolution_shift(cfg.data.size, d.shift_base_resolution)
    end = resolution_shift(cfg.data.size, d.shift_end_base_resolution) if d.schedule == "interpolated_cosine" else 0.0
    return Schedule(d.schedule, d.logsnr_min, d.logsnr_max, shift, end)


def build_objective(cfg: KinemaConfig, spec: Optional[BackboneSpec] = None
                    ) -> DiffusionObjective | DistillationObjective | AutoencoderObjective:
    """The training objective of a config (``train.objective``): the autoencoder loss of
    ``train.autoencoder`` (:mod:`kinema.autoencoding`); distillation against the teacher of
    ``cfg.distill`` (:func:`build_distillation_objective`); or the diffusion loss of ``cfg.diffusion``
    with the conditioning hooks the config turns on (classifier-free guidance dropout, context frames,
    the low-resolution input of a super-resolution stage) and self-conditioning when the backbone reads
    ``self_cond``. Those read the backbone's ``spec``: the one given (the trainer passes its model's),
    or that of a backbone built from ``cfg``."""
    d, t = cfg.diffusion, cfg.train
    check_objective(cfg)
    if t.objective == "autoencoder":  # a wrapper of a frozen autoencoder has no geometry in its config: the model's
        ae = cfg.model.backbone
        return AutoencoderObjective(t.autoencoder, getattr(ae, "latent_channels", None),
                                    getattr(ae, "spatial_factor", None), getattr(ae, "temporal_factor", None))
    spec = spec or backbone_spec(build_backbone(cfg.model.name, cfg.model.backbone))
    if t.objective == "distill":
        return build_distillation_objective(cfg, _sr_hooks(cfg, spec))
    hooks = (GuidanceDropout(t.cond_dropout), ContextFrames(t.context)) + _sr_hooks(cfg, spec)
    self_condition = SELF_CONDITION_PROB if "self_cond" in spec.reads else 0.0
    return DiffusionObjective(build_schedule(cfg), d.parameterization, d.weighting, d.min_snr_gamma, d.t_sampling,
                              hooks, self_condition, noise_prior(d.frame_noise_corr), d.high_noise_weight,
                              d.max_weight, d.sigma_data)


# ---- distillation ---------------------------------------------------------------------------------


def takes_guidance_weight(cfg: KinemaConfig) -> bool:
    """Is the model of ``cfg`` a guided student, taking the guidance weight w as an input (Meng et al.
    2023) instead of running classifier-free guidance's two passes?"""
    return cfg.train.objective == "distill" and cfg.distill.guided


def distilled_steps(cfg: KinemaConfig) -> Optional[int]:
    """The DDIM steps a progressive-distillation student was distilled for (None: not such a student)."""
    if cfg.train.objective == "distill" and cfg.distill.stage == "progressive":
        return cfg.distill.student_steps
    return None


def build_distillation_objective(cfg: KinemaConfig, hooks: tuple = ()) -> DistillationObjective:
    """:class:`~kinema.diffusion.distill.DistillationObjective` for ``cfg.distill``: the schedule and the
    sampler's grid spacing are the student's (= the teacher's, :func:`kinema.train.distill.round_config`
    copies them); the teacher's parameterization and whether it takes w come from its checkpoint;
    ``hooks`` complete the conditioning (an SR stage's low-resolution input)."""
    dc = cfg.distill
    teacher_cfg = ckpt_io.load_checkpoint_config(ckpt_io.resolve_checkpoint(_teacher_path(cfg)))
    return DistillationObjective(build_schedule(cfg), dc.stage, cfg.diffusion.parameterization,
                                 teacher_cfg.diffusion.parameterization, dc.student_steps, cfg.sample.spacing,
                                 dc.w_range if dc.guided else None, takes_guidance_weight(teacher_cfg),
                                 cfg.diffusion.t_sampling, hooks, noise_prior(cfg.diffusion.frame_noise_corr),
                                 cfg.diffusion.sigma_data, teacher_cfg.diffusion.sigma_data)


def _teacher_path(cfg: KinemaConfig) -> str:
    if not cfg.distill.teacher:
        raise ValueError("train.objective=distill needs distill.teacher: the teacher's checkpoint or run directory")
    return cfg.distill.teacher


def build_teacher(cfg: KinemaConfig, *, frozen_hashes: bool = True) -> Part:
    """The frozen ``teacher`` part of a distillation config: the checkpoint ``distill.teacher`` (its
    EMA weights, on CPU, without gradients), recorded by its resolved path and sha256."""
    teacher, ckpt = load_system(_teacher_path(cfg), device="cpu")
    teacher.model.requires_grad_(False)
    source = str(ckpt.resolve())
    return Part(teacher.model, trainable=False, source=source,
                sha256=ckpt_io.hash_path(source) if frozen_hashes else None)


def init_from_teacher(student: nn.Module, teacher: nn.Module, source: str) -> None:
    """Start the student as a copy of its teacher (Salimans & Ho 2022, Algorithm 2; Meng et al. 2023).
    A guided student's extra guidance-weight embedding is the only thing the teacher lacks: it keeps
    its zero-initialized output, so the student starts as the teacher at every w. (``build_system``
    also freezes a built-in text encoder in the student: the teacher is fed the student's text
    embeddings, so they must stay the teacher's.)"""
    own, state = student.state_dict(), teacher.state_dict()
    unexpected = [k for k in state if k not in own or own[k].shape != state[k].shape]
    extra = [k for k in own if k not in state]
    if unexpected or any("guidance_weight" not in k for k in extra):
        raise ValueError(f"the student's model does not fit teacher {source}: "
                         f"{(unexpected or [k for k in extra if 'guidance_weight' not in k])[:3]} differ; the "
                         f"student must be the teacher's model (plus a guidance-weight input for guided students)")
    student.load_state_dict(state, strict=False)


def _sr_hooks(cfg: KinemaConfig, spec: BackboneSpec) -> tuple:
    """The low-resolution input hook of a super-resolution stage (none for a base model)."""
    if not cfg.sr.is_stage:
        return ()
    return (LowResInput(cfg.sr, build_schedule(cfg), "lowres_logsnr" in spec.reads),)


def check_objective(cfg: KinemaConfig) -> None:
    """``train.objective`` must fit the kind of model ``model.name`` registers (denoiser /
    autoencoder); an autoencoder trains in pixels."""
    kind, objective = backbone_entry(cfg.model.name).kind, cfg.train.objective
    if kind == "autoencoder" and objective != "autoencoder":
        raise ConfigError(f"model.name={cfg.model.name} is an autoencoder: train it with train.objective=autoencoder "
                          f"(got train.objective={objective})")
    if kind != "autoencoder" and objective == "autoencoder":
        raise ConfigError(f"train.objective=autoencoder needs an autoencoder model "
                          f"(model.name={', '.join(backbone_names(kind='autoencoder'))}), got model.name={cfg.model.name}")
    if kind == "autoencoder" and cfg.model.space != "pixel":
        raise ConfigError(f"model.name={cfg.model.name} is an autoencoder; it trains on pixels, set model.space=pixel")


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
    lr: Optional[float] = None  # a trainable part's learning rate (None: train.lr)

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
    def noise(self) -> NoisePrior:
        """The forward process's noise prior (``diffusion.frame_noise_corr``; diffusion/noise.py)."""
        return noise_prior(self.cfg.diffusion.frame_noise_corr)

    @property
    def is_context_model(self) -> bool:
        """Trained with context frames (``train.context.max_frames > 0`` or ``key_every > 0``)?"""
        return self.cfg.train.context.enabled

    @property
    def is_sr_stage(self) -> bool:
        """A super-resolution stage of a cascade (``sr.spatial_factor`` or ``sr.temporal_factor`` > 1)?"""
        return self.cfg.sr.is_stage

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_text(self, captions) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.model, TextConditioned):
            raise ValueError("this model is not text-conditional (model.text.encoder=none); --prompt needs a model "
                             "trained with a text encoder")
        return self.model.encode_text(captions)

    def require_generative(self) -> None:
        """Raise when the model cannot sample (an autoencoder)."""
        if backbone_entry(self.cfg.model.name).kind != "denoiser":
            raise ValueError(f"this checkpoint is an autoencoder (model.name={self.cfg.model.name}, trained with "
                             f"train.objective=autoencoder), not a generative model: it cannot sample. Use it as the "
                             f"autoencoder of a latent model: model.space=latent model.autoencoder=PATH")

    def to(self, device) -> "System":
        """Move every part (the model and the frozen parts) to ``device``."""
        for part in self.parts.values():
            part.module.to(device)
        return self


def named_trainable_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The parameters of a trainable part that train (``requires_grad``), by name."""
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def build_system(cfg: KinemaConfig, *, frozen_hashes: bool = True, training: bool = True) -> System:
    """The parts a config describes, freshly initialized (frozen parts loaded from their paths). With
    ``frozen_hashes`` the content hash of every frozen part's source is computed (for the manifest).
    With ``training`` the training-only parts too: a distillation config's ``teacher``, from which the
    student's weights are initialized."""
    model = build_model(cfg)
    spec = backbone_spec(model)
    if cfg.model.space == "pixel":  # a latent model's frames are known once its autoencoder is loaded (below)
        check_context_config(cfg.train.context, cfg.data.num_frames, spec.in_channels, spec.extra_in_channels)
    check_objective(cfg)
    if isinstance(model, VideoAutoencoder):  # its data: 1 + k * temporal_factor frames, sizes divisible
        try:
            model.latent_shape(cfg.data.num_frames, cfg.data.size, cfg.data.size)
        except ValueError as e:
            raise ConfigError(f"data.num_frames={cfg.data.num_frames} / data.size={cfg.data.size} do not fit the "
                              f"autoencoder: {e}") from None
    elif cfg.model.space == "pixel":  # a latent SR stage is checked once its autoencoder is loaded
        check_sr_config(cfg.sr, cfg.data.num_frames, cfg.data.size, spec)
    parts = {MODEL: Part(model, trainable=True)}
    encoder = model.encoder() if isinstance(model, TextConditioned) else None
    if isinstance(encoder, TransformersTextEncoder):
        source = str(Path(cfg.model.text.path).expanduser().resolve())
        parts["text_encoder"] = Part(encoder, trainable=False, source=source,
                                     sha256=ckpt_io.hash_path(source) if frozen_hashes else None)
    if training and cfg.train.objective == "distill":
        parts[TEACHER] = build_teacher(cfg, frozen_hashes=frozen_hashes)
        init_from_teacher(model, parts[TEACHER].module, parts[TEACHER].source)
        if isinstance(encoder, nn.Module):  # a built-in text encoder stays the teacher's: both read its embeddings
            encoder.requires_grad_(False)
    if cfg.model.space == "latent":
        parts[AUTOENCODER] = load_autoencoder(cfg.model.autoencoder, frozen_hashes=frozen_hashes)
        if not isinstance(model, VideoAutoencoder):
            check_latent_sr_config(cfg, spec, parts[AUTOENCODER].module)
    elif cfg.model.autoencoder is not None:
        raise ConfigError(f"model.autoencoder={cfg.model.autoencoder} is set but model.space={cfg.model.space}; "
                          f"set model.space=latent (or remove model.autoencoder)")
    for name, (module, source) in backbone_frozen_parts(model).items():  # e.g. Video LDM's image model
        parts[name] = Part(module, trainable=False, source=source,
                           sha256=ckpt_io.hash_path(source) if frozen_hashes else None)
    if training:
        parts.update(objective_parts(cfg, spec))
    system = System(cfg, parts)
    if cfg.model.space != "pixel" and cfg.train.context.enabled:  # context frames count latent frames
        check_context_config(cfg.train.context, system.space.shape()[1], spec.in_channels, spec.extra_in_channels,
                             frames_name=f"the latent frames of data.num_frames={cfg.data.num_frames}")
    return system


def check_latent_sr_config(cfg: KinemaConfig, spec: BackboneSpec, autoencoder: VideoAutoencoder) -> None:
    """The ``sr`` section of a model in the latent space of ``autoencoder``: a latent upsampler (Video LDM,
    Blattmann et al. 2023, section 3.2) reads the low-resolution *pixel* video, so its extra input channels
    are the autoencoder's input channels; and its autoencoder must be frame-wise (temporal_factor 1, as
    Video LDM's image autoencoder), whose latent frames are the pixel frames, so the low-resolution frames
    line up with the latent ones (a temporally compressing autoencoder would need a frame mapping that is
    not written)."""
    try:
        check_sr_config(cfg.sr, cfg.data.num_frames, cfg.data.size, spec, lowres_channels=autoencoder.in_channels)
    except ValueError as e:
        raise ConfigError(f"{e} (model.space=latent: the low-resolution input is the {autoencoder.in_channels}-channel "
                          f"pixel video)") from None
    if cfg.sr.is_stage and autoencoder.temporal_factor > 1:
        raise ConfigError(f"an SR stage in the latent space of an autoencoder with temporal_factor="
                          f"{autoencoder.temporal_factor}: its latent frames are not pixel frames, so the low-resolution "
                          f"frames do not line up with them; use a frame-wise autoencoder (temporal_factor 1) or a "
                          f"pixel-space SR stage (model.space=pixel)")


def objective_parts(cfg: KinemaConfig, spec: BackboneSpec) -> dict[str, Part]:
    """The extra trainable parts the objective of ``cfg`` trains next to ``model`` (training only; each
    gets its own optimizer): the patch discriminator of ``train.autoencoder.disc``."""
    ae = cfg.train.autoencoder
    disc = ae.discriminator(spec.in_channels) if cfg.train.objective == "autoencoder" else None
    if disc is None:
        return {}
    if cfg.data.size < 2 ** (ae.disc_layers + 2):
        raise ConfigError(f"train.autoencoder.disc_layers={ae.disc_layers} halves data.size={cfg.data.size} too often "
                          f"(the patch discriminator needs data.size >= {2 ** (ae.disc_layers + 2)}); lower disc_layers")
    return {DISCRIMINATOR: Part(disc, trainable=True, lr=ae.disc_lr)}


def load_autoencoder(path: Optional[str], *, frozen_hashes: bool = True) -> Part:
    """The frozen autoencoder part of a latent space: the EMA weights of the autoencoder checkpoint (or
    newest checkpoint of the run directory) at ``path``, in eval mode without gradients, recorded by
    the checkpoint directory and its content hash; or, when ``path`` is a folder that is no kinema
    checkpoint or run, the diffusers ``AutoencoderKL`` in it (:func:`load_diffusers_autoencoder`)."""
    if not path:
        raise ConfigError("model.space=latent needs model.autoencoder=PATH: the checkpoint (or run directory) of "
                          "a trained autoencoder (model.name=causal_ae, train.objective=autoencoder), or a local "
                          "diffusers AutoencoderKL folder")
    try:
        ckpt = ckpt_io.resolve_checkpoint(path)
    except FileNotFoundError:
        if not Path(path).expanduser().is_dir():
            raise
        return load_diffusers_autoencoder(path, frozen_hashes=frozen_hashes)  # or one error naming both kinds
    cfg = ckpt_io.load_checkpoint_config(ckpt)
    if backbone_entry(cfg.model.name).kind != "autoencoder":
        raise ConfigError(f"model.autoencoder={path} is a checkpoint of model.name={cfg.model.name}, not of an "
                          f"autoencoder (e.g. model.name=causal_ae)")
    system, ckpt = load_system(ckpt, device="cpu")
    ae = system.model.requires_grad_(False).eval()
    source = str(ckpt.resolve())
    return Part(ae, trainable=False, source=source, sha256=ckpt_io.hash_path(source) if frozen_hashes else None)


def load_diffusers_autoencoder(path: str, *, frozen_hashes: bool = True) -> Part:
    """The frozen autoencoder part for a local diffusers ``AutoencoderKL`` folder (``models/vae_adapter.py``),
    recorded by the resolved folder and the sha256 of its files (config and weights)."""
    from kinema.models.vae_adapter import load_diffusers_vae

    ae = load_diffusers_vae(path)
    source = str(Path(path).expanduser().resolve())
    return Part(ae, trainable=False, source=source, sha256=ckpt_io.hash_path(source) if frozen_hashes else None)


def backbone_frozen_parts(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """The frozen pretrained modules a backbone holds inside itself (``frozen_parts()``: name -> (module,
    local source path); Video LDM's image model), recorded as frozen parts; {} for other backbones."""
    net = model.net if isinstance(model, TextConditioned) else model
    declare = getattr(net, "frozen_parts", None)
    return declare() if callable(declare) else {}


def load_system(path: str | Path, *, ema: bool = True, device: str | torch.device = "auto") -> tuple[System, Path]:
    """(system in eval mode on ``device``, the checkpoint directory) from a checkpoint or run directory.
    Frozen parts are checked against the hashes the checkpoint recorded; training-only parts (a
    distillation teacher) are neither loaded nor checked."""
    ckpt = ckpt_io.resolve_checkpoint(path)
    cfg = ckpt_io.load_checkpoint_config(ckpt)  # safe YAML; errors name the file
    manifest = ckpt_io.load_manifest(ckpt)
    recorded = manifest["parts"].get(AUTOENCODER, {}).get("source")
    if recorded and Path(recorded).is_dir():  # the exact autoencoder checkpoint, not the newest of its run
        cfg.model.autoencoder = recorded
    system = build_system(cfg, training=False)
    needed = {**manifest, "parts": {k: v for k, v in manifest["parts"].items() if k not in TRAINING_ONLY}}
    ckpt_io.check_frozen_parts(needed, system.manifest(), ckpt)
    state = ckpt_io.load_part_state(ckpt, MODEL, ema=ema, manifest=manifest)
    ckpt_io.load_model_state(system.model, state, ckpt)
    dev = resolve_device(device) if isinstance(device, str) else device
    system.to(dev).model.eval()
    return system, ckpt


__all__ = ["AUTOENCODER", "MODEL", "TEACHER", "Part", "System", "autocast", "autocast_dtype", "build_model",
           "build_objective", "build_schedule", "build_system", "build_teacher", "check_latent_sr_config",
           "check_objective", "distilled_steps", "load_autoencoder", "load_diffusers_autoencoder", "load_system",
           "named_trainable_parameters", "objective_parts", "resolve_device", "takes_guidance_weight"]
