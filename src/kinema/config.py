"""Typed configuration: a tree of dataclasses, YAML presets over it, ``a.b=value`` overrides.

Resolution order (DESIGN.md section 5, habit 6): dataclass defaults <- YAML preset <- command-line
overrides. Unknown keys and wrongly typed values are errors that name the key and suggest the
closest valid one. The resolved config is written as YAML next to every run and into every
checkpoint, and reads back to an equal object.

The machinery (:func:`from_dict`, :func:`to_dict`, :func:`apply_overrides`) works for any
dataclass tree; :class:`KinemaConfig` is kinema's own.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from kinema.models.text import TextConfig
from kinema.models.unet import UNetConfig


class ConfigError(ValueError):
    """A configuration problem, with a message that names the offending key and value."""


# ---- kinema's config tree ------------------------------------------------------------------------


@dataclass
class DiffusionConfig:
    schedule: str = "cosine"  # cosine | shifted_cosine | linear
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    shift_base_resolution: int = 64  # shifted_cosine: shift = 2 log(base / data.size)
    parameterization: str = "v"  # eps | x | v
    weighting: str = "v"  # eps | x | v | min_snr (the loss's weighting, see diffusion/objective.py)
    min_snr_gamma: float = 5.0
    t_sampling: str = "stratified"  # stratified | uniform


@dataclass
class ModelConfig:
    name: str = "unet3d"
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)  # text encoder feeding model.unet.text_dim


@dataclass
class DataConfig:
    dataset: str = "bouncing_shapes"  # bouncing_shapes | moving_digits | folder
    path: Optional[str] = None  # folder of videos (dataset=folder) or MNIST file (moving_digits)
    num_frames: int = 16
    size: int = 32
    frame_stride: int = 1
    fps: Optional[float] = None
    crop: str = "random"  # center | random
    image_fraction: float = 0.0  # joint image-video training: share of each item's frames that are images
    image_path: Optional[str] = None  # folder of images for joint training (default: frames of other clips)
    length: int = 100000  # items per epoch for the synthetic datasets
    class_key: Optional[str] = None  # item key with an integer class id (e.g. color_id) -> class_labels
    num_workers: int = 0
    seed: int = 0


@dataclass
class ContextConfig:
    """Context-conditioned (prediction) models (VDM section 3.1 / Video LDM section 3.3): each training
    item gets a random number of clean known frames in ``Conditioning.context`` + ``context_mask``
    (needs ``model.unet.extra_in_channels = in_channels + 1``); the loss skips the known frames."""

    max_frames: int = 0  # 0: off. Else each item gets 0..max_frames known frames (< data.num_frames)
    none_prob: float = 0.1  # share of items with no known frames: the model is also unconditional
    interpolation_prob: float = 0.25  # share of conditioned items whose known frames are split over both ends


@dataclass
class TrainConfig:
    out_dir: str = "runs/kinema"
    steps: int = 10000
    minutes: Optional[float] = None  # stop early after this wall-clock budget (checkpoint first)
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # constant | cosine (decays to lr * lr_min_ratio at train.steps)
    lr_min_ratio: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # classifier-free guidance: share of items trained without text / class
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step))
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    channels_last: bool = False
    parallel: str = "ddp"  # under torchrun: ddp | fsdp (FSDP2: shard weights, gradients, optimizer state)
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    sample_every: int = 1000  # a preview GIF every K steps (0: never)
    sample_num: int = 4
    sample_steps: int = 32
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress: bool = True
    context: ContextConfig = field(default_factory=ContextConfig)


@dataclass
class SampleConfig:
    sampler: str = "ddim"  # ddim | ddpm | dpmpp
    steps: int = 64
    eta: float = 0.0
    spacing: str = "t"  # t | logsnr
    thresholding: Optional[str] = "static"  # None | static | dynamic
    use_ema: bool = True
    guidance: float = 0.0  # classifier-free guidance weight w (0: plain conditional sampling)
    guidance_low: Optional[float] = None  # set: Imagen Video's oscillating guidance between guidance and this
    guidance_constant: float = 0.5  # oscillating guidance: share of the steps held at `guidance` first
    fps: int = 8


@dataclass
class KinemaConfig:
    name: str = "kinema"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


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


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix or cls.__name__}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'" + _suggest(str(key), names))
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"invalid config section '{prefix or cls.__name__}': {e}") from e


def to_dict(obj) -> dict:
    """Nested plain dict (tuples become lists) suitable for YAML/JSON."""

    def convert(v):
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
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
    """Apply ``key.sub=value`` strings to a nested dict, checking each key path against ``cls``."""
    data = merge({}, data)
    for item in overrides:
        path, value = parse_override(item)
        node, node_cls = data, cls
        for i, part in enumerate(path):
            names = [f.name for f in dataclasses.fields(node_cls)]
            where = ".".join(path[: i + 1])
            if part not in names:
                raise ConfigError(f"unknown config key '{where}'" + _suggest(part, names))
            tp = _hints(node_cls)[part]
            if i == len(path) - 1:
                node[part] = value
            else:
                if not dataclasses.is_dataclass(tp):
                    raise ConfigError(f"config key '{where}' is a value, not a section; cannot set '{'.'.join(path)}'")
                node = node.setdefault(part, {})
                node_cls = tp
    return data


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
