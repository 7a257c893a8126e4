"""Checkpoints: a manifest of parts, safetensors for tensors, ``weights_only``-loadable torch files
for optimizer and RNG state, and the resolved config (DESIGN.md section 3 "Parts", section 5
habit 7, section 7).

Layout of one checkpoint directory ``<run>/ckpt/step-00001000/``::

    model.safetensors    the trained part ``model`` (all its tensors)
    ema.safetensors      the EMA of its trainable parameters (what sampling uses by default)
    trainer.pt           optimizer / RNG state and step (torch.load(weights_only=True))
    config.yaml          the resolved config of the run
    meta.json            the manifest: format, step, kinema version, backbone, and the parts

The manifest (``meta.json``, format :data:`FORMAT`) names every part of the system::

    "parts": {"model": {"trainable": true, "weights": "model.safetensors", "ema": "ema.safetensors"},
              "text_encoder": {"trainable": false, "source": "/models/t5", "sha256": "..."}}

A frozen part is recorded by its source path and content hash; loading refuses a checkpoint whose
frozen part now hashes differently (another model behind the same path, or another path). A
checkpoint without a format (kinema 0.1, format 1: one model + config) still loads: its tensors
are renamed by the backbone's registered ``upgrade_state``.

Writes are atomic: everything goes to a hidden temporary directory that is renamed into place,
so a crash mid-write never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from kinema import __version__
from kinema.config import ConfigError, config_from_yaml
from kinema.models import backbone_entry
from kinema.validate import first_nonfinite

STEP_RE = re.compile(r"^step-(\d+)$")
FORMAT = 2  # 1: kinema 0.1 (no parts in meta.json); 2: the manifest of parts


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(run_dir: str | Path, step: int, *, model_state: dict, ema_state: Optional[dict],
                    trainer_state: dict, config_yaml: str, meta: Optional[dict] = None,
                    parts: Optional[dict] = None, keep_last: int = 3,
                    part_states: Optional[dict[str, dict]] = None) -> Path:
    """Write checkpoint ``step`` under ``run_dir/ckpt`` atomically; keep the newest ``keep_last``.

    ``model_state`` / ``ema_state``: the ``model`` part and the EMA of its trainable parameters;
    ``parts``: the manifest entries of every part (``System.manifest()``); ``part_states``: the tensors
    of the other trainable parts (e.g. ``discriminator``), each saved as ``<name>.safetensors``."""
    root = Path(run_dir) / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    manifest_parts = {name: dict(entry) for name, entry in (parts or {"model": {"trainable": True}}).items()}
    save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
    manifest_parts.setdefault("model", {"trainable": True})["weights"] = "model.safetensors"
    if ema_state is not None:
        save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        manifest_parts["model"]["ema"] = "ema.safetensors"
    for name, state in (part_states or {}).items():
        save_file(_contiguous(state), str(tmp / f"{name}.safetensors"))
        manifest_parts.setdefault(name, {"trainable": True})["weights"] = f"{name}.safetensors"
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    info = {"format": FORMAT, "step": step, "kinema_version": __version__, **(meta or {}), "parts": manifest_parts}
    (tmp / "meta.json").write_text(json.dumps(info, indent=2))
    _same_mode_for_all(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _same_mode_for_all(ckpt_dir: Path) -> None:
    """safetensors writes its files 0600; give them the mode the other files got (the umask's)."""
    mode = (ckpt_dir / "meta.json").stat().st_mode & 0o777
    for f in ckpt_dir.glob("*.safetensors"):
        os.chmod(f, mode)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "ckpt"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "meta.json").exists()]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, a run directory or its ``ckpt`` folder; return the
    checkpoint directory (the newest one for the latter two)."""
    p = Path(path).expanduser()
    if (p / "meta.json").exists() and (p / "model.safetensors").exists():
        return p
    for run in (p, p.parent if p.name == "ckpt" else None):
        if run is not None:
            found = list_checkpoints(run)
            if found:
                return found[-1]
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}: the path does not exist")
    raise FileNotFoundError(f"no checkpoint found in {p} (expected model.safetensors + meta.json, "
                            f"or a run directory with ckpt/step-*)")


class CheckpointError(ValueError):
    """A checkpoint file cannot be read (truncated, empty, not what it should be) or holds
    non-finite weights; the message names the file."""


def load_checkpoint_config(ckpt_dir: str | Path):
    """The resolved config stored in a checkpoint (safe YAML; a tag or bad key names the file)."""
    path = Path(ckpt_dir) / "config.yaml"
    try:
        return config_from_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


def load_manifest(ckpt_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's manifest; a format-1 checkpoint (no parts) reads as format 1 with its one
    ``model`` part (and the EMA if present)."""
    d = Path(ckpt_dir)
    meta = load_meta(d)
    fmt = int(meta.get("format", 1))
    if fmt > FORMAT:
        raise ValueError(f"checkpoint {d} has format {fmt}, newer than this kinema ({__version__}) reads "
                         f"(format {FORMAT}); upgrade kinema")
    if fmt == 1:
        model = {"trainable": True, "weights": "model.safetensors"}
        if (d / "ema.safetensors").exists():
            model["ema"] = "ema.safetensors"
        meta = {**meta, "format": 1, "parts": {"model": model}}
    return meta


def _read_tensors(path: Path, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """A safetensors file; unreadable files and (unless ``allow_nonfinite``) NaN/inf weights raise a
    :class:`CheckpointError` naming the file and the first bad tensor."""
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # SafetensorError, OSError: truncated, empty or not a safetensors file
        raise CheckpointError(f"cannot read {path}: {e}") from None
    bad = None if allow_nonfinite else first_nonfinite(state)
    if bad is not None:
        raise CheckpointError(f"{path} holds non-finite weights (NaN/inf), first in tensor {bad!r}; "
                              f"use an earlier checkpoint")
    return state


def load_weights(ckpt_dir: str | Path, ema: bool = True, *, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """The raw tensors of ``ema.safetensors`` (``ema``, when present) or ``model.safetensors``; NaN/inf
    weights are refused unless ``allow_nonfinite``."""
    d = Path(ckpt_dir)
    path = d / "ema.safetensors" if ema and (d / "ema.safetensors").exists() else d / "model.safetensors"
    return _read_tensors(path, allow_nonfinite)


def load_part_state(ckpt_dir: str | Path, part: str = "model", *, ema: bool = True,
                    manifest: Optional[dict] = None, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of ``part``: its weights, with the EMA of its trained parameters laid over them
    (``ema``, when the checkpoint has one). Format-1 tensors are renamed by the backbone's
    ``upgrade_state``."""
    d = Path(ckpt_dir)
    manifest = manifest or load_manifest(d)
    entry = manifest["parts"].get(part)
    if entry is None or "weights" not in entry:
        raise ValueError(f"checkpoint {d} holds no tensors for part {part!r} (parts: {sorted(manifest['parts'])})")
    state = _read_tensors(d / entry["weights"], allow_nonfinite)
    if ema and "ema" in entry:
        state.update(_read_tensors(d / entry["ema"], allow_nonfinite))
    if manifest["format"] == 1:
        state = upgrade_format1(state, manifest.get("model"))
    return state


def upgrade_format1(state: dict[str, torch.Tensor], backbone: Optional[str]) -> dict[str, torch.Tensor]:
    """Tensor names of a format-1 checkpoint -> today's, by the backbone's registered ``upgrade_state``."""
    entry = backbone_entry(backbone or "unet3d")
    return entry.upgrade_state(state) if entry.upgrade_state is not None else state


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """Optimizer / RNG / step state; never unpickles arbitrary objects (weights_only=True)."""
    path = Path(ckpt_dir) / "trainer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # EOFError (empty), RuntimeError (truncated zip), UnpicklingError (refused object)
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {' '.join(str(e).split()[:40])}") from None


def check_checkpoint(ckpt_dir: str | Path) -> Optional[str]:
    """Why a complete-looking checkpoint cannot be resumed from, or None when it looks intact.
    Cheap: reads the headers of every safetensors file the manifest names (which must cover each
    file exactly), the zip directory of ``trainer.pt``, ``meta.json`` and ``config.yaml``; tensors
    are not loaded."""
    d = Path(ckpt_dir)
    try:
        manifest = load_manifest(d)
    except Exception as e:
        return f"{d / 'meta.json'}: {e}"
    files = [entry[key] for entry in manifest["parts"].values() for key in ("weights", "ema") if key in entry]
    for name in files:
        try:
            with safe_open(str(d / name), "pt") as f:
                f.keys()
        except Exception as e:
            return f"{d / name}: {e}"
    path = d / "trainer.pt"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except Exception as e:
        return f"{path}: {type(e).__name__}: {e}"
    try:
        load_checkpoint_config(d)
    except Exception as e:  # CheckpointError / ConfigError, already naming the file
        return str(e)
    return None


def newest_intact(run_dir: str | Path, report=print, set_aside: bool = True) -> Optional[Path]:
    """The newest checkpoint of a run that passes :func:`check_checkpoint`. Each newer corrupt one
    is reported and (``set_aside``) renamed ``ckpt/corrupt-step-*``, never deleted."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        reason = check_checkpoint(ckpt)
        if reason is None:
            return ckpt
        if not set_aside:
            report(f"checkpoint {ckpt} is corrupt ({reason}); trying the one before it")
            continue
        aside, n = ckpt.with_name(f"corrupt-{ckpt.name}"), 1
        while aside.exists():
            aside, n = ckpt.with_name(f"corrupt-{ckpt.name}-{n}"), n + 1
        try:
            os.rename(ckpt, aside)
            moved = f"moved aside to {aside}"
        except OSError as e:
            moved = f"could not move it aside ({e})"
        report(f"checkpoint {ckpt} is corrupt ({reason}); {moved}; trying the one before it")
    return None


def hash_path(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 over a file, or over a directory's files (relative names and contents, in sorted order):
    the identity of a frozen part's source."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"frozen part source {p} does not exist")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        if p.is_dir():
            digest.update(str(f.relative_to(p)).encode() + b"\0")
        with open(f, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def check_frozen_parts(manifest: dict, current: dict[str, dict], source: str | Path) -> None:
    """Refuse to pair a checkpoint with frozen parts other than those it was trained with: same names,
    and for each recorded hash the same content hash now (``current``: ``System.manifest()``)."""
    recorded = {k: v for k, v in manifest["parts"].items() if not v.get("trainable", True)}
    built = {k: v for k, v in current.items() if not v.get("trainable", True)}
    if set(recorded) != set(built) and manifest["format"] > 1:
        raise ValueError(f"checkpoint {source} was trained with frozen parts {sorted(recorded)} but the config builds "
                         f"{sorted(built)}")
    for name, entry in recorded.items():
        want, have = entry.get("sha256"), built.get(name, {}).get("sha256")
        if want and have and want != have:
            raise ValueError(f"checkpoint {source} was trained with frozen part {name!r} from {entry.get('source')} "
                             f"(sha256 {want[:12]}...), but {built[name].get('source')} now has sha256 {have[:12]}...: "
                             f"a different {name}. Point the config at the original files.")


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """``model.load_state_dict(state)`` with an error that says plainly which checkpoint does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[0]})")
        raise ValueError(f"checkpoint {source} does not fit this model: " + "; ".join(parts)
                         + ". Was it written by a different model or config?")
    model.load_state_dict(state)
