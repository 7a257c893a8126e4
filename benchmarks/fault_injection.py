"""Fault injection: kill training with SIGKILL at random steps, resume, and check nothing is lost.

1. Trains a tiny model for ``--steps`` steps without interruption (the reference losses).
2. Trains the same run again in another directory, killing it ``--kills`` times with ``kill -9``:
   each time at a random step after the last one logged, plus a random delay of up to
   ``--jitter`` seconds (so some kills land inside a checkpoint write; with ``train.ckpt_every=1``
   most steps write one), then resumes with ``kinema train ... --resume``. Every process is a real
   ``python -m kinema train`` (stale lock, ``.tmp-step-*`` debris and half-written log rows are the
   real thing).
3. Checks that every step's logged loss equals the reference (exact resume), that no step is
   missing or logged twice, that no ``ckpt/.tmp-*`` debris or ``.lock`` remains, and prints one JSON
   summary line.

    python benchmarks/fault_injection.py --kills 6 --steps 24
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = {
    "model.unet.dim": 8, "model.unet.dim_mults": "[1,2]", "model.unet.num_res_blocks": 1,
    "model.unet.attn_levels": "[1]", "model.unet.head_dim": 8, "model.unet.norm_groups": 4,
    "model.unet.dropout": 0.1, "data.num_frames": 4, "data.size": 16, "train.batch_size": 2,
    "train.warmup_steps": 2, "train.log_every": 1, "train.sample_every": 0, "train.progress": False,
    "train.tensorboard": False, "train.keep_last": 2,
}


def command(out_dir: Path, steps: int, ckpt_every: int, resume: bool) -> list[str]:
    overrides = {**TINY, "train.out_dir": str(out_dir), "train.steps": steps, "train.ckpt_every": ckpt_every}
    cmd = [sys.executable, "-m", "kinema", "train", "demo", *(f"{k}={v}" for k, v in overrides.items())]
    return cmd + (["--resume"] if resume else [])


def log_rows(out_dir: Path) -> list[dict]:
    path = out_dir / "log.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass  # a row cut by the kill (the next start drops it)
    return rows


def run_to_end(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--ckpt-every", type=int, default=1, help="1: most kills can land in a checkpoint write")
    ap.add_argument("--jitter", type=float, default=0.3, help="max extra seconds before the kill")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kinema-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()

    ref_dir, run_dir = work / "reference", work / "faulty"
    done = run_to_end(command(ref_dir, args.steps, args.ckpt_every, resume=False), env)
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    reference = {r["step"]: r["loss"] for r in log_rows(ref_dir)}

    kills = resumes = in_write = stale_lock_takeovers = debris_cleanups = dropped_rows = 0
    kill_steps = []
    started = False
    while kills < args.kills:
        have = max((r["step"] for r in log_rows(run_dir)), default=0)
        if have >= args.steps - 1:
            break
        spread = max(1, (args.steps - 1 - have) // (args.kills - kills))  # leave room for the kills still to come
        target = min(args.steps - 1, have + rng.randint(1, spread))
        proc = subprocess.Popen(command(run_dir, args.steps, args.ckpt_every, resume=started), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        resumes += started
        started = True
        while proc.poll() is None and max((r["step"] for r in log_rows(run_dir)), default=0) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, args.jitter))
        if proc.poll() is not None:  # finished (or failed) before the kill
            out = proc.stdout.read()
            if proc.returncode != 0:
                print(out, file=sys.stderr)
                return 1
            break
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0]
        kills += 1
        kill_steps.append(max((r["step"] for r in log_rows(run_dir)), default=0))
        in_write += any((run_dir / "ckpt").glob(".tmp-step-*"))
        stale_lock_takeovers += "taking over a stale lock" in out
        debris_cleanups += "unfinished checkpoint write" in out
        dropped_rows += "dropped" in out and "row(s)" in out

    final = run_to_end(command(run_dir, args.steps, args.ckpt_every, resume=started), env)
    resumes += started
    out = final.stdout + final.stderr
    stale_lock_takeovers += "taking over a stale lock" in out
    debris_cleanups += "unfinished checkpoint write" in out
    dropped_rows += "dropped" in out and "row(s)" in out
    if final.returncode != 0:
        print(out, file=sys.stderr)
        return 1

    rows = log_rows(run_dir)
    steps = [r["step"] for r in rows]
    got = {r["step"]: r["loss"] for r in rows}
    mismatched = [s for s in reference if s in got and not math.isclose(got[s], reference[s], rel_tol=1e-6,
                                                                         abs_tol=1e-7)]
    summary = {
        "steps": args.steps, "ckpt_every": args.ckpt_every, "kills": kills, "kill_steps": kill_steps,
        "kills_during_checkpoint_write": in_write, "resumes": resumes,
        "stale_lock_takeovers": stale_lock_takeovers, "debris_cleanups": debris_cleanups,
        "log_truncations": dropped_rows,
        "lost_steps": len(set(reference) - set(got)), "duplicate_log_rows": len(steps) - len(set(steps)),
        "loss_mismatches": len(mismatched), "max_abs_loss_diff": max((abs(got[s] - reference[s]) for s in reference
                                                                     if s in got), default=None),
        "tmp_debris_left": len(list((run_dir / "ckpt").glob(".tmp-*"))), "lock_left": (run_dir / ".lock").exists(),
        "seconds": round(time.time() - start, 1),
    }
    summary["ok"] = (summary["lost_steps"] == 0 and summary["duplicate_log_rows"] == 0 and not mismatched
                     and summary["tmp_debris_left"] == 0 and not summary["lock_left"])
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
