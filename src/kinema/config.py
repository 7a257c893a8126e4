"""Typed configuration: a tree of dataclasses, YAML presets over it, ``a.b=value`` overrides.

Resolution order (DESIGN.md section 5, habit 6): dataclass defaults <- YAML preset <- command-line
overrides. Unknown keys and wrongly typed values are errors that name the key and suggest the
closest valid one. The resolved config is written as YAML next to every run and into every
checkpoint, and reads back to an equal object.

The machinery (:func:`from_dict`, :func:`to_dict`, :func:`apply_overrides`) works for any
dataclass tree; :class:`KinemaConfig` is kinema's own. String options are typed ``Literal[...]`` and
checked on load (the error lists the valid values). One section is a *variant*: ``model.name``
selects a registered backbone and with it the dataclass of the section ``model.<its section>``
(``model.unet`` for ``unet3d``), see :class:`ModelConfig`.

Why hand-written rather than OmegaConf or pydantic: OmegaConf's structured configs do not check
``Literal`` types and know no variant section; pydantic validates well but would replace only the
~70-line scalar coercion, not the key walk of dot-list overrides, the "did you mean" suggestions or
the variant section, and it coerces more loosely than kinema wants (e.g. ``1.5`` for an int).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from kinema.autoencoding import AutoencoderLossConfig
from kinema.diffusion.context import ContextConfig
from kinema.diffusion.distill import DistillConfig
from kinema.diffusion.superres import SRConfig
from kinema.models import backbone_entry, backbone_names
from kinema.models.text import TextConfig


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key and value."""


# ---- kinema's config tree ------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    schedule: Literal["cosine", "shifted_cosine", "interpolated_cosine", "linear"] = "cosine"
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift_base_resolution: int = 64  # shifted_cosine: shift = 2 log(base / data.size); interpolated_cosine: at t = 0
    shift_end_base_resolution: int = 64  # interpolated_cosine: the shift at t = 1 (e.g. half data.size: more noise there)
    parameterization: Literal["eps", "x", "v"] = "v"
    sigma_data: float = 1.0  # v only: EDM's preconditioning scale (1 = plain v), see diffusion/objective.py
    weighting: Literal["eps", "x", "v", "min_snr"] = "v"  # the loss's weighting, see diffusion/objective.py
    min_snr_gamma: float = 5.0
    high_noise_weight: float = 1.0  # the loss weight's factor at log-SNR -> -inf (1 at +inf; sigmoid(-log-SNR) between)
    max_weight: float = 0.0  # cap on the loss weight in units of the x-error (0: none), see diffusion/objective.py
    t_sampling: Literal["stratified", "uniform"] = "stratified"
    frame_noise_corr: float = 0.0  # correlation of the noise between frames (PYoCo mixed noise, diffusion/noise.py)


@dataclass
class ModelConfig:
    """The model: a registered backbone (``name``) with its own config section, a text encoder, the space.

    ``backbone`` holds the selected backbone's config dataclass. In YAML and on the command line it
    lives under the backbone's section key: ``model.unet`` for ``unet3d`` (``model.unet.dim=32``);
    ``cfg.model.<section>`` reads it too. Sections of other backbones are errors.
    """

    name: str = "unet3d"
    backbone: Any = None  # the config dataclass registered for `name` (YAML: model.<section>)
    text: TextConfig = field(default_factory=TextConfig)  # text encoder feeding the backbone's text_dim
    space: Literal["pixel", "latent"] = "pixel"  # where diffusion runs (see kinema/spaces.py)
    autoencoder: Optional[str] = None  # space=latent: a trained autoencoder's checkpoint or run dir (a frozen part)

    # The variant machinery (from_dict / apply_overrides / to_dict): field naming the variant, field
    # holding its section, and name -> (section key, config dataclass).
    __variant__ = ("name", "backbone")

    @staticmethod
    def variant(name: str) -> tuple[str, type]:
        entry = backbone_entry(name)
        return entry.section, entry.config_cls

    @staticmethod
    def variant_sections() -> dict[str, str]:
        """section key -> backbone name, for every registered backbone."""
        return {backbone_entry(n).section: n for n in backbone_names()}

    def __post_init__(self) -> None:
        section, cls = self.variant(self.name)
        if self.backbone is None:
            self.backbone = cls()
        elif not isinstance(self.backbone, cls):
            raise ConfigError(f"model.{section} must be a {cls.__name__} for model.name={self.name}, got "
                              f"{type(self.backbone).__name__}")

    def __getattr__(self, item: str):  # cfg.model.unet -> cfg.model.backbone when model.name=unet3d
        if item.startswith("__") or item in ("name", "backbone"):
            raise AttributeError(item)
        if backbone_entry(self.name).section == item:
            return self.backbone
        raise AttributeError(f"ModelConfig has no attribute {item!r} (model.name={self.name})")


@dataclass
class DataConfig:
    dataset: Literal["bouncing_shapes", "moving_digits", "folder", "latents"] = "bouncing_shapes"
    path: Optional[str] = None  # folder of videos (dataset=folder), MNIST file (moving_digits), cache dir (latents)
    num_frames: int = 16
    size: int = 32
    frame_stride: int = 1  # frames between clip frames (synthetic data: every k-th frame of a k-times longer clip)
    render_scale: int = 1  # synthetic data: draw at size * k and shrink (antialiased) to size, as an SR stage's input
    fps: Optional[float] = None
    crop: Literal["center", "random"] = "random"
    image_fraction: float = 0.0  # joint image-video training: share of each item's frames that are images
    image_path: Optional[str] = None  # folder of images for joint training (default: frames of other clips)
    image_match: tuple[str, ...] = ()  # item keys an appended image's source must share with the clip, e.g. [caption]
    length: int = 100000  # items per epoch for the synthetic datasets
    wall_margin: float = 0.0  # bouncing_shapes: the walls this fraction of the canvas inside its edges
    class_key: Optional[str] = None  # item key with an integer class id (e.g. color_id) -> class_labels
    num_workers: int = 0
    seed: int = 0


@dataclass
class TrainConfig:
    out_dir: str = "runs/kinema"
    objective: Literal["diffusion", "distill", "autoencoder"] = "diffusion"  # what a step computes (system.build_objective)
    steps: int = 10000
    minutes: Optional[float] = None  # stop early after this wall-clock budget (checkpoint first)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    # adamw, or muon: Muon on the weight matrices (linear and conv kernels), AdamW on the rest (train/optim.py)
    optimizer: Literal["adamw", "muon"] = "adamw"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 500
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine decays to lr * lr_min_ratio at train.steps
    lr_min_ratio: float = 0.0
    lr_decay_over: Literal["steps", "minutes"] = "steps"  # minutes: the cosine ends with the train.minutes budget
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # classifier-free guidance: share of items trained without text / class
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    channels_last: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; fsdp = FSDP2: shard weights, grads, optimizer state
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    sample_every: int = 1000  # a preview GIF every K steps (0: never)
    sample_num: int = 4
    sample_steps: int = 32
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress: bool = True
    context: ContextConfig = field(default_factory=ContextConfig)
    autoencoder: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)  # objective=autoencoder


@dataclass
class SampleConfig:
    sampler: Literal["ddim", "ddpm", "dpmpp"] = "ddim"
    steps: int = 64
    eta: float = 0.0
    spacing: Literal["t", "logsnr"] = "t"
    thresholding: Optional[Literal["static", "dynamic"]] = "static"  # pixel space only; latents are never clipped
    use_ema: bool = True
    guidance: float = 0.0  # classifier-free guidance weight w (0: plain conditional sampling)
    guidance_low: Optional[float] = None  # set: Imagen Video's oscillating guidance between guidance and this
    guidance_constant: float = 0.5  # oscillating guidance: share of the steps held at `guidance` first
    # [lo, hi]: guide only at noise levels lo <= log-SNR < hi (null: unbounded), plain conditional sampling
    # elsewhere (Kynkaanniemi et al. 2024); e.g. [null, 0] leaves the low-noise steps that draw outlines unguided
    guidance_interval: Optional[tuple[Optional[float], Optional[float]]] = None
    fps: int = 8

    def __post_init__(self) -> None:
        if self.guidance_interval is not None:
            from kinema.diffusion.guidance import check_interval

            self.guidance_interval = check_interval(self.guidance_interval, "sample.guidance_interval")


@dataclass
class KinemaConfig:
    name: str = "kinema"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    sr: SRConfig = field(default_factory=SRConfig)  # super-resolution stage of a cascade (diffusion/superres.py)
    distill: DistillConfig = field(default_factory=DistillConfig)  # read when train.objective=distill


# ---- generic machinery ---------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(sorted(valid))}"


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        valid = ", ".join(map(str, args))
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {valid}, got {value!r}{hint}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # Optional[X]: X's own message (e.g. the valid values of a Literal)
            raise ConfigError(errors[0] + " (or null)")
        raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section ({tp.__name__}); got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list):
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip() else []
            value = parsed if isinstance(parsed, (list, tuple)) else [parsed]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"config key '{key}' expects {len(args)} values, got {value!r}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}' expects bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise ConfigError(f"config key '{key}' expects int, got {value!r}")
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key '{key}' expects int, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"config key '{key}' expects int, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' expects float, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects float, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"config key '{key}' expects str, got {value!r}")
        return str(value)
    raise ConfigError(f"config key '{key}' has an unsupported annotation {tp!r}")


def _variant_of(cls, data: dict, prefix: str) -> Optional[tuple[str, str, type]]:
    """For a variant section class (``__variant__``, e.g. :class:`ModelConfig`): (holder field, YAML
    key of the selected variant's section, its dataclass), the variant chosen by ``data``'s name
    field (or the default). None for ordinary dataclasses."""
    spec = getattr(cls, "__variant__", None)
    if spec is None:
        return None
    name_field, holder = spec
    default = next(f.default for f in dataclasses.fields(cls) if f.name == name_field)
    name = data.get(name_field, default) if isinstance(data, dict) else default
    try:
        section, sub_cls = cls.variant(str(name))
    except ValueError as e:
        raise ConfigError(f"config key '{prefix + '.' if prefix else ''}{name_field}': {e}") from None
    return holder, section, sub_cls


def _field_names(cls, variant: Optional[tuple[str, str, type]]) -> list[str]:
    names = [f.name for f in dataclasses.fields(cls)]
    if variant is not None:
        holder, section, _ = variant
        names = [section if n == holder else n for n in names]
    return names


def _wrong_variant(cls, key: str, full: str, data: dict) -> Optional[ConfigError]:
    owners = cls.variant_sections() if hasattr(cls, "variant_sections") else {}
    if key in owners:
        name_field = cls.__variant__[0]
        where = (full.rsplit(".", 1)[0] + "." if "." in full else "") + name_field
        return ConfigError(f"config section '{full}' belongs to {where}={owners[key]}, but {where} is "
                           f"{data.get(name_field, 'the default')!r}; set {where}={owners[key]} or remove the section")
    return None


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or cls.__name__}' must be a mapping, got {data!r}")
    variant = _variant_of(cls, data, prefix)
    hints = _hints(cls)
    names = _field_names(cls, variant)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _wrong_variant(cls, key, full, data) or ConfigError(f"unknown config key '{full}'"
                                                                      + _suggest(str(key), names))
        if variant is not None and key == variant[1]:
            kwargs[variant[0]] = _coerce(value, variant[2], full)
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"invalid config section '{prefix or cls.__name__}': {e}") from e


def to_dict(obj) -> dict:
    """Nested plain dict (tuples become lists) suitable for YAML/JSON; a variant section is written
    under its section key (``model.unet``)."""

    def convert(v):
        if dataclasses.is_dataclass(v):
            out = {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
            variant = _variant_of(type(v), out, "")
            if variant is not None:
                holder, section, _ = variant
                out = {(section if k == holder else k): val for k, val in out.items()}
            return out
        if isinstance(v, (list, tuple)):
            return [convert(i) for i in v]
        return v

    return convert(obj)


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge: ``update`` wins; nested dicts are merged, not replaced."""
    out = dict(base)
    for k, v in (update or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``'train.batch_size=16'`` -> (['train', 'batch_size'], 16) with YAML scalar parsing."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(cls, data: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` strings to a nested dict, checking each key path against ``cls``.
    A variant's name may be set in the same list, before or after keys of its section."""
    data = merge({}, data)
    parsed = [parse_override(item) for item in overrides]
    _drop_replaced_variants(cls, data, parsed)
    for item, (path, value) in zip(overrides, parsed):
        node, node_cls = data, cls
        for i, part in enumerate(path):
            where = ".".join(path[: i + 1])
            variant = _variant_of(node_cls, _with_pending(node, node_cls, path[:i], parsed), where.rsplit(".", 1)[0])
            names = _field_names(node_cls, variant)
            if part not in names:
                raise _wrong_variant(node_cls, part, where, node) or ConfigError(f"unknown config key '{where}'"
                                                                                 + _suggest(part, names))
            tp = variant[2] if variant is not None and part == variant[1] else _hints(node_cls)[part]
            if i == len(path) - 1:
                node[part] = value
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"config key '{where}' is a value, not a section; cannot set '{'.'.join(path)}'")
                node = node.setdefault(part, {})
                node_cls = tp
    return data


def _drop_replaced_variants(cls, data: dict, parsed: list[tuple[list[str], Any]]) -> None:
    """An override that changes a variant's name (``model.name=toy`` over a preset with a
    ``model.unet`` section) drops the preset's sections of other variants: they configure a
    backbone that is no longer selected. Sections given as overrides are still checked."""
    for path, value in parsed:
        node, node_cls = data, cls
        for part in path[:-1]:
            if not isinstance(node.get(part), dict) or not dataclasses.is_dataclass(_hints(node_cls).get(part)):
                break
            node, node_cls = node[part], _hints(node_cls)[part]
        else:
            spec = getattr(node_cls, "__variant__", None)
            if spec is not None and path[-1] == spec[0] and hasattr(node_cls, "variant_sections"):
                for section, owner in node_cls.variant_sections().items():
                    if owner != value:
                        node.pop(section, None)


def _with_pending(node: dict, node_cls, prefix: list[str], parsed: list[tuple[list[str], Any]]) -> dict:
    """``node`` with the last override of its variant name field (if any) applied, so that
    ``model.unet.dim=8 model.name=unet3d`` resolves the section by the name given later."""
    spec = getattr(node_cls, "__variant__", None)
    if spec is None:
        return node
    chosen = [value for path, value in parsed if path == [*prefix, spec[0]]]
    return {**node, spec[0]: chosen[-1]} if chosen else node


# ---- presets -------------------------------------------------------------------------------------

PRESET_DIR = Path(__file__).parent / "configs"


def presets() -> dict[str, Path]:
    """The registry of named presets: the YAML files shipped in ``kinema/configs``."""
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot parse YAML config {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def resolve_preset(name_or_path: str) -> Path:
    """A YAML path, or the name of a registered preset (with or without ``.yaml``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    registry = presets()
    stem = Path(name_or_path).stem if name_or_path.endswith(".yaml") else name_or_path
    if stem in registry:
        return registry[stem]
    close = difflib.get_close_matches(stem, list(registry), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"no config file or preset named {name_or_path!r}{hint} Presets: {', '.join(registry)}")


def load_config(name_or_path: Optional[str] = None, overrides: Optional[list[str]] = None,
                cls=KinemaConfig):
    """Defaults <- preset/YAML file <- overrides, checked and typed."""
    data = _read_yaml(resolve_preset(name_or_path)) if name_or_path else {}
    data = apply_overrides(cls, data, list(overrides or []))
    return from_dict(cls, data)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))


def config_from_yaml(text: str, cls=KinemaConfig):
    data = yaml.safe_load(text) or {}
    return from_dict(cls, data)
