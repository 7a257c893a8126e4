"""Data-parallel training on CPU with the gloo backend: ``torchrun`` launches 2 processes that must
end with the weights 1 process gets from the same global batch, and resume from the checkpoint
(also with another world size)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kinema.config import load_config, save_config
from kinema import checkpoint as ckpt_io
from kinema.train.distributed import free_port, spawn_local
from kinema.train.loop import Trainer
from conftest import tiny_overrides

WORKER = Path(__file__).with_name("dist_worker.py")
# Global batch 4 in 2 accumulated micro-batches: 2 items per micro-batch in one process, 1 per rank
# in two (exercising DDP's no_sync and FSDP's deferred gradient reduction).
STEPS = {"train.batch_size": 4, "train.grad_accum": 2, "train.steps": 4, "train.ckpt_every": 2,
         "train.warmup_steps": 1, "train.lr": 1e-3, "train.ema_warmup": False, "train.ema_decay": 0.5}
TOL = {"rtol": 1e-4, "atol": 2e-6}


def torchrun(nproc: int, *args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def config_file(tmp_path: Path, name: str, **extra) -> Path:
    cfg = load_config(None, tiny_overrides(tmp_path / name, **{**STEPS, **extra}))
    path = tmp_path / f"{name}.yaml"
    save_config(cfg, path)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, global batch 4, 4 steps: final weights and EMA."""
    tmp = tmp_path_factory.mktemp("reference")
    trainer = Trainer(load_config(config_file(tmp, "one")))
    trainer.fit()
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, trainer.ema.state_dict()


def check_reports(report_dir: Path, reference, world: int, resumed_at: int, parallel: str) -> None:
    model_ref, ema_ref = reference
    reports = [json.loads((report_dir / f"rank{r}.json").read_text()) for r in range(world)]
    assert [r["resumed_at"] for r in reports] == [resumed_at] * world, "every rank resumes from the checkpoint"
    assert all(r["final_step"] == 4 and r["parallel"] == parallel for r in reports)
    assert all(r["sharded"] == (parallel == "fsdp") for r in reports)
    states = [load_file(str(report_dir / f"rank{r}.safetensors")) for r in range(world)]
    for k, v in states[0].items():
        for other in states[1:]:
            assert torch.equal(other[k], v), f"{k} differs between ranks (EMA and weights must stay identical)"
    for k, v in model_ref.items():
        torch.testing.assert_close(states[0][f"model.{k}"], v, **TOL, msg=lambda m: f"model {k}: {m}")
        torch.testing.assert_close(states[0][f"ema.{k}"], ema_ref[k], **TOL, msg=lambda m: f"ema {k}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_and_resume(tmp_path, reference, parallel):
    """2 ranks x batch 2 == 1 rank x batch 4: under torchrun, `kinema train` runs 2 steps and writes a
    checkpoint, then both ranks resume from it and train 2 more; weights and EMA match the
    one-process run and agree across ranks. The step-2 checkpoint also resumes in one process
    (world size 2 -> 1) and lands on the same weights."""
    cfg = config_file(tmp_path, "run", **{"train.parallel": parallel})
    run = tmp_path / "run"
    torchrun(2, str(WORKER), str(cfg), str(tmp_path / "reports"))
    check_reports(tmp_path / "reports", reference, 2, resumed_at=2, parallel=parallel)
    found = ckpt_io.list_checkpoints(run)
    assert [p.name for p in found] == ["step-00000002", "step-00000004"]
    assert ckpt_io.load_meta(found[0])["world_size"] == 2
    saved = ckpt_io.load_weights(found[-1], ema=False)
    for k, v in reference[0].items():
        torch.testing.assert_close(saved[k], v, **TOL)

    shutil.copytree(run, tmp_path / "single")
    shutil.rmtree(tmp_path / "single" / "ckpt" / "step-00000004")
    one = Trainer(load_config(cfg, [f"train.out_dir={tmp_path / 'single'}"]), resume=True)
    assert one.step == 2
    one.fit()
    for k, v in reference[0].items():
        torch.testing.assert_close(one.model.state_dict()[k], v, **TOL)


def test_noise_slices_follow_the_loader_shards():
    """Rank r of W gets global batch positions r, r + W, ... from the loader; its slice of the global
    noise must be the rows a one-process run gives those same items."""
    from kinema.data.loader import shard_indices
    from kinema.train.distributed import local_slice

    world, per_rank = 3, 2
    one = shard_indices(30, seed=1, world_size=1)[: world * per_rank]  # the one-process first batch
    noise = torch.arange(world * per_rank)  # noise row i belongs to one[i]
    for r in range(world):
        items = shard_indices(30, seed=1, rank=r, world_size=world)[:per_rank]
        rows = local_slice(noise, r, world)
        assert [one[i] for i in rows.tolist()] == items.tolist()


@pytest.mark.slow
def test_ranks_agree_on_a_schedule_that_follows_the_clock(tmp_path):
    """train.lr_decay_over=minutes with a clock that runs twice as fast on rank 1: the ranks take the
    slowest clock at log steps, so they use the same learning rates (decayed as the budget ends) and
    end with the same weights."""
    cfg = config_file(tmp_path, "clock", **{"train.steps": 10000, "train.minutes": 0.1, "train.ckpt_every": 0,
                                           "train.lr_schedule": "cosine", "train.lr_decay_over": "minutes",
                                           "train.lr_min_ratio": 0.1})
    torchrun(2, str(WORKER), str(cfg), str(tmp_path / "reports"), "skewed-clock")
    lrs = [json.loads((tmp_path / "reports" / f"rank{r}.json").read_text())["lr"] for r in range(2)]
    assert lrs[0] == lrs[1] and len(lrs[0]) > 3
    assert lrs[0][-1] < 0.5e-3, f"the rate should have decayed by the end of the budget: {lrs[0][-5:]}"
    states = [load_file(str(tmp_path / "reports" / f"rank{r}.safetensors")) for r in range(2)]
    for k, v in states[0].items():
        assert torch.equal(states[1][k], v), f"{k} differs between ranks"


def test_spawn_local_raises_what_a_process_raised(tmp_path):
    """An error inside one of the spawned processes (here: an unknown preset in both) is raised in the caller,
    with the process's message, instead of hanging or being lost."""
    from kinema.cli import train_preset

    with pytest.raises(Exception, match="no_such_preset"):
        spawn_local(train_preset, 2, ("no_such_preset", [f"train.out_dir={tmp_path}"], False, False), threads=1)
    with pytest.raises(ValueError, match="nprocs must be >= 1, got 0"):
        spawn_local(train_preset, 0)


def test_spawn_local_returns_rank_0s_result_however_large():
    """Rank 0's result comes back, also one larger than a pipe's buffer (read while the processes run; waiting for
    them first would leave rank 0 blocked on the write)."""
    assert spawn_local(bytes, 2, (2**20,), threads=1) == bytes(2**20)
