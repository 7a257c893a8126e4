"""Checkpoints: safetensors for weights, ``weights_only``-loadable torch files for optimizer and
RNG state, and the resolved config (DESIGN.md section 5 habit 7 and section 7).

Layout of one checkpoint directory ``<run>/ckpt/step-00001000/``::

    model.safetensors    the trained weights
    ema.safetensors      the EMA weights (what sampling uses by default)
    trainer.pt           optimizer / scheduler / RNG state and step (torch.load(weights_only=True))
    config.yaml          the resolved config of the run
    meta.json            step, kinema version, model name

Writes are atomic: everything goes to a hidden temporary directory that is renamed into place,
so a crash mid-write never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

from kinema import __version__

STEP_RE = re.compile(r"^step-(\d+)$")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(run_dir: str | Path, step: int, *, model_state: dict, ema_state: Optional[dict],
                    trainer_state: dict, config_yaml: str, meta: Optional[dict] = None,
                    keep_last: int = 3) -> Path:
    """Write checkpoint ``step`` under ``run_dir/ckpt`` atomically; keep the newest ``keep_last``."""
    root = Path(run_dir) / "ckpt"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
    if ema_state is not None:
        save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
    torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    info = {"step": step, "kinema_version": __version__, **(meta or {})}
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


def load_weights(ckpt_dir: str | Path, ema: bool = True, *, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint (EMA by default when present), loaded with safetensors. Weights with
    NaN/inf are refused (naming the first such tensor) unless ``allow_nonfinite``."""
    from kinema.validate import first_nonfinite

    d = Path(ckpt_dir)
    path = d / "ema.safetensors" if ema and (d / "ema.safetensors").exists() else d / "model.safetensors"
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


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """Optimizer / RNG / step state; never unpickles arbitrary objects (weights_only=True)."""
    path = Path(ckpt_dir) / "trainer.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # EOFError (empty), RuntimeError (truncated zip), UnpicklingError (refused object)
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {' '.join(str(e).split()[:40])}") from None


def load_checkpoint_config(ckpt_dir: str | Path):
    """The resolved config stored in a checkpoint (safe YAML; a tag or bad key names the file)."""
    import yaml

    from kinema.config import ConfigError, config_from_yaml

    path = Path(ckpt_dir) / "config.yaml"
    try:
        return config_from_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_checkpoint(ckpt_dir: str | Path) -> Optional[str]:
    """Why a complete-looking checkpoint cannot be resumed from, or None when it looks intact.
    Cheap: reads the safetensors headers (which must cover each file exactly), the zip directory
    of ``trainer.pt`` and ``meta.json``; tensors are not loaded."""
    import zipfile

    from safetensors import safe_open

    d = Path(ckpt_dir)
    for name in ("model.safetensors", "ema.safetensors"):
        path = d / name
        if name == "ema.safetensors" and not path.exists():
            continue
        try:
            with safe_open(str(path), "pt") as f:
                f.keys()
        except Exception as e:
            return f"{path}: {e}"
    path = d / "trainer.pt"
    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except Exception as e:
        return f"{path}: {type(e).__name__}: {e}"
    try:
        json.loads((d / "meta.json").read_text())
    except Exception as e:
        return f"{d / 'meta.json'}: {e}"
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


def load_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / "meta.json").read_text())


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
