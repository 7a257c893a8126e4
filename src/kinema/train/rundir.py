"""The run directory of a training run: who may write it, what an existing one means, and the
housekeeping done at each start (DESIGN.md section 7, issue 11).

- :func:`prepare_run_dir` (every rank, before anything heavy): refuses to train into a directory
  that already holds a run unless ``resume`` (continue it) or ``overwrite`` (rank 0 moves the old
  run aside to ``RUN.old-<timestamp>``; nothing is ever deleted). Refuses while another process
  holds the run's lock.
- :class:`RunLock`: an exclusive lock file ``RUN/.lock`` made with ``O_CREAT | O_EXCL`` (atomic
  on local disks and on NFS, where ``fcntl.flock`` is often a no-op), holding JSON
  ``{pid, host, started}``. A lock left by a dead process on this host is stale: it is reported
  with its PID and taken over. A lock from another host cannot be checked and is refused, with
  the command that removes it. Under torchrun only rank 0 takes it.
- :func:`clean_tmp_debris`: ``ckpt/.tmp-step-*`` directories of dead processes (a kill during a
  checkpoint write) are removed at the next start.
- :func:`truncate_log`: ``log.jsonl`` rows after the resumed step (logged after the last
  checkpoint, about to be logged again) are dropped, as is a half-written last line.
- :func:`config_changes`: what differs between the checkpoint's config and the resumed one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from kinema.train import distributed as dist

LOCK_NAME = ".lock"
TMP_RE = re.compile(r"^\.tmp-step-\d+-(\d+)$")
EMPTY_LOCK_GRACE_S = 30.0  # an empty lock file older than this was left by a process killed while creating it

# Keys whose change on resume is reported: they change the data, the noise or the objective, so the
# resumed run no longer continues the original one exactly.
RESUME_KEYS = ("data.dataset", "data.path", "data.num_frames", "data.size", "data.frame_stride", "data.render_scale", "data.fps",
               "data.seed", "train.batch_size", "train.grad_accum", "train.seed", "train.lr", "train.ema_decay",
               "diffusion.parameterization", "diffusion.sigma_data", "diffusion.weighting", "diffusion.schedule",
               "diffusion.t_sampling",
               "sr.spatial_factor", "sr.temporal_factor", "sr.aug_max")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (the message says why and what to do)."""


def _host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_existing_run(run_dir: Path) -> bool:
    """A run lives here: it has checkpoints (``ckpt/step-*``), a ``log.jsonl`` or a ``config.yaml``."""
    run_dir = Path(run_dir)
    if (run_dir / "log.jsonl").exists() or (run_dir / "config.yaml").exists():
        return True
    ckpt = run_dir / "ckpt"
    return ckpt.is_dir() and any(p.name.startswith("step-") for p in ckpt.iterdir())


# ---- the lock ----------------------------------------------------------------------------------------


def read_lock(run_dir: Path) -> Optional[dict]:
    """The lock's JSON (``{}`` when the file is empty or unreadable), or None when there is no lock."""
    path = Path(run_dir) / LOCK_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
        return info if isinstance(info, dict) else {}
    except ValueError:
        return {}


def lock_state(run_dir: Path, info: Optional[dict]) -> str:
    """``free``, ``live`` (a running process on this host, or one on another host we cannot check),
    ``remote`` (another host) or ``stale`` (this host, the process is gone)."""
    if info is None:
        return "free"
    if not info:  # being written right now, or left empty by a kill between create and write
        try:
            age = time.time() - (Path(run_dir) / LOCK_NAME).stat().st_mtime
        except FileNotFoundError:
            return "free"
        return "stale" if age > EMPTY_LOCK_GRACE_S else "live"
    if info.get("host") != _host():
        return "remote"
    return "live" if pid_alive(int(info.get("pid", -1))) else "stale"


def _describe(info: dict) -> str:
    if not info:
        return "an empty lock file (a process was creating it)"
    return f"PID {info.get('pid')} on host {info.get('host')} (since {info.get('started')})"


def busy_message(run_dir: Path, info: dict, state: str) -> str:
    lock = Path(run_dir) / LOCK_NAME
    if state == "remote":
        return (f"run directory {run_dir} is locked by {_describe(info)}; it may still be training there. "
                f"If that process is gone, remove the lock with: rm {lock}")
    return (f"run directory {run_dir} is in use by {_describe(info)}: another training is writing it. "
            f"Wait for it to finish, stop it, or train into another train.out_dir (if that PID is not a kinema "
            f"training, remove the lock: rm {lock})")


class RunLock:
    """Exclusive lock on a run directory (see the module docstring). ``acquire`` creates the
    directory if needed; ``release`` removes the lock only if it is still ours."""

    def __init__(self, run_dir: str | Path, report: Callable[[str], None] = print) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.report = report
        self.info: Optional[dict] = None

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return self
            info = read_lock(self.run_dir)
            state = lock_state(self.run_dir, info)
            if state == "free":
                continue  # released between our attempt and the read: try again
            if state != "stale":
                raise RunDirError(busy_message(self.run_dir, info or {}, state))
            self._take_over(info)
        raise RunDirError(f"could not lock run directory {self.run_dir}: the lock keeps changing hands")

    def _create(self) -> bool:
        info = {"pid": os.getpid(), "host": _host(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except PermissionError as e:
            raise PermissionError(f"cannot write to run directory {self.run_dir}: {e.strerror}") from None
        try:
            os.write(fd, json.dumps(info).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.info = info
        return True

    def _take_over(self, stale: dict) -> None:
        """Move the stale lock aside (atomic rename), check that what we moved is the stale lock
        and not a fresh one made meanwhile (else put it back), then delete it."""
        aside = self.run_dir / f"{LOCK_NAME}.stale-{os.getpid()}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text() or "{}")
        except ValueError:
            moved = {}
        if moved != stale:
            os.rename(aside, self.path)  # someone else's fresh lock: give it back, then re-check
            return
        aside.unlink()
        what = f"PID {stale.get('pid')}, started {stale.get('started')}" if stale else "empty lock file"
        self.report(f"run directory {self.run_dir}: taking over a stale lock ({what}; that process is no "
                    f"longer running on {_host()})")

    def release(self) -> None:
        if self.info is None:
            return
        if read_lock(self.run_dir) == self.info:
            self.path.unlink(missing_ok=True)
        self.info = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---- start of a run ---------------------------------------------------------------------------------


def prepare_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool, main: bool = True,
                    report: Callable[[str], None] = print) -> Path:
    """Check ``run_dir`` before a run starts (every rank; only ``main`` moves things).

    A live lock is refused in every mode. An existing run is refused without ``resume`` or
    ``overwrite``; with ``overwrite`` the old run is renamed to ``RUN.old-<timestamp>`` (by the
    main rank). Returns the run directory path."""
    run_dir = Path(run_dir).expanduser()
    if resume and overwrite:
        raise RunDirError("--resume continues the run in train.out_dir and --overwrite moves it aside; choose one")
    info = read_lock(run_dir) if run_dir.is_dir() else None
    state = lock_state(run_dir, info)
    if state in ("live", "remote"):
        raise RunDirError(busy_message(run_dir, info or {}, state))
    if resume or not run_dir.is_dir() or not is_existing_run(run_dir):
        return run_dir
    if not overwrite:
        raise RunDirError(
            f"run directory {run_dir} already holds a run ({_existing_summary(run_dir)}). To continue it, add "
            f"--resume; to start fresh, choose another train.out_dir, or add --overwrite to move the old run "
            f"aside to {run_dir.name}.old-<timestamp> (nothing is deleted)")
    if main:
        aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while aside.exists():
            aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            n += 1
        os.rename(run_dir, aside)
        report(f"--overwrite: moved the old run {run_dir} aside to {aside}")
    return run_dir


def _existing_summary(run_dir: Path) -> str:
    steps = sorted(p.name for p in (run_dir / "ckpt").glob("step-*")) if (run_dir / "ckpt").is_dir() else []
    if steps:
        return f"newest checkpoint {steps[-1]}"
    return "a log.jsonl / config.yaml, no checkpoint yet"


def remove_if_unused(run_dir: Path) -> bool:
    """After a run failed before doing anything: remove ``run_dir`` if it holds nothing but an
    empty log and the config this run wrote (so a bad setting leaves no stray directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    if not names <= {"config.yaml", "log.jsonl", "tb"}:
        return False
    log = run_dir / "log.jsonl"
    if log.exists() and log.stat().st_size > 0:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def clean_tmp_debris(run_dir: str | Path, report: Callable[[str], None] = print) -> list[Path]:
    """Remove ``ckpt/.tmp-step-*-<pid>`` directories whose writer (``pid`` on this host) is dead;
    returns what was removed. Call with the run's lock held."""
    root = Path(run_dir) / "ckpt"
    removed = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        m = TMP_RE.match(p.name)
        if not m or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and pid_alive(pid):
            report(f"leaving {p}: its writer, PID {pid}, is still running")
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if removed:
        report(f"removed {len(removed)} unfinished checkpoint write(s) left by a killed run: "
               f"{', '.join(p.name for p in removed)}")
    return removed


def truncate_log(log_path: str | Path, step: int) -> int:
    """Keep the rows of ``log.jsonl`` with ``step <= step`` (and drop unparsable lines, e.g. one cut
    by a kill); rewrite atomically. Returns the number of rows dropped."""
    path = Path(log_path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and int(row.get("step", 0)) <= step
        except (ValueError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return dropped


# ---- resume -----------------------------------------------------------------------------------------


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def config_changes(old: dict, new: dict, keys=RESUME_KEYS) -> list[str]:
    """``["train.batch_size: 2 -> 4", ...]`` for the ``keys`` whose values differ between two config dicts."""
    out = []
    for key in keys:
        a, b = _lookup(old, key), _lookup(new, key)
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


# ---- the trainer's hook -------------------------------------------------------------------------------


def locked_fit(fit):
    """Decorator for ``Trainer.fit``: rank 0 locks ``self.out_dir`` for the whole run (all ranks
    agree on the outcome, so none waits for a rank that gave up), removes the debris of killed
    checkpoint writes and truncates ``log.jsonl`` to the step being resumed; the lock is released in
    a ``finally``. A run that fails before writing anything leaves no new directory behind."""
    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        run_dir = Path(self.out_dir)
        existed = run_dir.exists()
        lock, error = None, None
        if dist.is_main():
            try:
                lock = RunLock(run_dir, report=dist.print0).acquire()
                clean_tmp_debris(run_dir, report=dist.print0)
                dropped = truncate_log(run_dir / "log.jsonl", self.step)
                if dropped:
                    dist.print0(f"log.jsonl: dropped {dropped} row(s) after step {self.step} (logged after the last "
                           f"checkpoint; they are logged again)")
            except Exception as e:  # noqa: BLE001 - re-raised below, after the ranks agree
                error = e
        failed = dist.all_reduce_max(torch.tensor(float(error is not None), device=self.device))
        if error is not None or failed.item() > 0:
            if lock is not None:
                lock.release()
            raise error if error is not None else RunDirError(f"rank 0 could not lock run directory {run_dir}")
        ok = False
        try:
            result = fit(self, *args, **kwargs)
            ok = True
        finally:
            if lock is not None:
                lock.release()
                if not ok and not existed:
                    remove_if_unused(run_dir)
        dist.barrier()  # no rank leaves before the lock is gone (a next Trainer on any rank would see it held)
        return result

    return wrapper
