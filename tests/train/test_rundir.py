"""Run directories (issue 11): refuse an existing run, the lock, debris, the log on resume, corrupt
or non-finite checkpoints, changed configs on resume, file modes, the progress bar's total."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from kinema import checkpoint as ck
from kinema.train import rundir
from kinema.train.loop import Trainer
from kinema.train.progress import BudgetBar, expected_last_step
from kinema.train.rundir import RunDirError, RunLock


def _rows(run):
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def _holder(run, *, write_tmp=False):
    """A real second process that holds the run's lock (and, optionally, an unfinished
    checkpoint write) until killed."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from kinema.train.rundir import RunLock
        RunLock({str(run)!r}).acquire()
        if {write_tmp!r}:
            os.makedirs(os.path.join({str(run)!r}, "ckpt", f".tmp-step-00000009-{{os.getpid()}}"))
        print("locked", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---- item 1: an existing run directory ------------------------------------------------------------


def test_existing_run_is_refused_and_overwrite_moves_it_aside(tiny, tmp_path):
    run = tmp_path / "run"
    Trainer(tiny(**{"train.steps": 2})).fit()
    old_weights = ck.load_weights(run / "ckpt" / "step-00000002", ema=False)
    with pytest.raises(RunDirError, match=r"already holds a run \(newest checkpoint step-00000002\).*--resume.*"
                                          r"--overwrite"):
        Trainer(tiny(**{"train.steps": 2, "train.seed": 1}))
    assert _rows(run) == [1, 2], "the refusal touched nothing"
    Trainer(tiny(**{"train.steps": 2, "train.seed": 1}), overwrite=True).fit()
    [aside] = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    moved = ck.load_weights(aside / "ckpt" / "step-00000002", ema=False)
    assert all(torch.equal(moved[k], v) for k, v in old_weights.items()), "the old run is kept intact"
    assert _rows(run) == [1, 2] and "seed: 1" in (run / "config.yaml").read_text()
    with pytest.raises(RunDirError, match="choose one"):
        Trainer(tiny(), resume=True, overwrite=True)


# ---- item 2: two trainings at once, stale and remote locks ------------------------------------------


def test_second_process_is_refused_and_a_killed_holder_is_taken_over(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run, write_tmp=True)
    try:
        with pytest.raises(RunDirError, match=rf"in use by PID {holder.pid} on host"):
            Trainer(tiny())
        lock = RunLock(run)
        with pytest.raises(RunDirError, match=rf"PID {holder.pid}"):
            lock.acquire()
        live_tmp = run / "ckpt" / f".tmp-step-00000009-{holder.pid}"
        assert rundir.clean_tmp_debris(run) == [] and live_tmp.exists(), "a live writer's temp dir is kept"
    finally:
        holder.kill()
        holder.wait()
    assert rundir.lock_state(run, rundir.read_lock(run)) == "stale"
    Trainer(tiny(**{"train.steps": 2})).fit()  # takes over the stale lock, removes the dead writer's debris
    out = capsys.readouterr().out
    assert f"taking over a stale lock (PID {holder.pid}" in out
    assert "removed 1 unfinished checkpoint write" in out and not live_tmp.exists()
    assert not (run / ".lock").exists(), "released at the end"
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-00000002"]


def test_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "x"}))
    with pytest.raises(RunDirError, match=r"PID 4242 on host elsewhere.*rm .*\.lock"):
        RunLock(run).acquire()
    with pytest.raises(RunDirError, match="PID 4242 on host elsewhere"):
        rundir.prepare_run_dir(run, resume=True, overwrite=False)


def test_lock_is_exclusive_and_released_in_finally(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        info = json.loads((run / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(RunDirError, match="in use by PID"):
            RunLock(run).acquire()
        assert lock.info == info
    assert not (run / ".lock").exists()


def test_only_rank_0_takes_the_lock(tiny, tmp_path, monkeypatch):
    import kinema.train.distributed as dist

    seen = []
    monkeypatch.setattr(dist, "is_main", lambda: False)  # this process plays a rank > 0
    monkeypatch.setattr(rundir.RunLock, "acquire", lambda self: seen.append(self) or self)
    trainer = Trainer(tiny(**{"train.steps": 1}))
    trainer.fit()
    assert seen == [] and not (tmp_path / "run" / ".lock").exists()


# ---- items 4, 5, 6: corrupt checkpoints, debris, log rows after the checkpoint ---------------------


@pytest.mark.parametrize("damage", ["truncate model.safetensors", "empty trainer.pt"])
def test_resume_falls_back_from_a_corrupt_newest_checkpoint(tiny, tmp_path, capsys, damage):
    run = tmp_path / "run"
    Trainer(tiny(**{"train.steps": 4})).fit()
    newest = run / "ckpt" / "step-00000004"
    if damage.startswith("truncate"):
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (newest / "trainer.pt").write_bytes(b"")
    resumed = Trainer(tiny(**{"train.steps": 6}), resume=True)
    out = capsys.readouterr().out
    bad = "model.safetensors" if damage.startswith("truncate") else "trainer.pt"
    assert f"checkpoint {newest} is corrupt ({newest / bad}" in out
    assert "moved aside to" in out and "resumed from" in out and "step-00000002 at step 2" in out
    assert resumed.step == 2 and (run / "ckpt" / "corrupt-step-00000004").is_dir()
    resumed.fit()
    assert _rows(run) == [1, 2, 3, 4, 5, 6], "rows 3-4 of the lost checkpoint are logged once, again"


def test_unreadable_checkpoint_files_are_named(tmp_path):
    run = tmp_path / "run"
    path = ck.save_checkpoint(run, 1, model_state={"w": torch.ones(2)}, ema_state=None, trainer_state={"step": 1},
                              config_yaml="name: x\n")
    (path / "trainer.pt").write_bytes(b"")
    with pytest.raises(ck.CheckpointError, match=r"cannot read .*trainer\.pt: EOFError"):
        ck.load_trainer_state(path)
    (path / "model.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(ck.CheckpointError, match=r"cannot read .*model\.safetensors"):
        ck.load_weights(path)
    (path / "config.yaml").write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ck.CheckpointError, match=r"cannot read .*config\.yaml: could not determine a constructor"):
        ck.load_checkpoint_config(path)


def test_nonfinite_weights_name_the_first_bad_tensor(tmp_path):
    run = tmp_path / "run"
    path = ck.save_checkpoint(run, 1, model_state={"a": torch.ones(2), "b.weight": torch.tensor([1.0, float("nan")])},
                              ema_state=None, trainer_state={"step": 1}, config_yaml="name: x\n")
    with pytest.raises(ck.CheckpointError, match=r"non-finite weights \(NaN/inf\), first in tensor 'b.weight'"):
        ck.load_weights(path)
    assert ck.load_weights(path, allow_nonfinite=True)["b.weight"].isnan().any()


def test_resume_drops_log_rows_after_the_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(tiny(**{"train.steps": 4, "train.ckpt_every": 2, "train.keep_last": 5})).fit()
    import shutil

    shutil.rmtree(run / "ckpt" / "step-00000004")  # as if killed after logging steps 3, 4
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 5, "lo')  # and mid-way through writing a row
    Trainer(tiny(**{"train.steps": 5}), resume=True).fit()
    assert "dropped 3 row(s) after step 2" in capsys.readouterr().out
    assert _rows(run) == [1, 2, 3, 4, 5]


def test_truncate_log_keeps_rows_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)) + "garbage\n")
    assert rundir.truncate_log(log, 2) == 3
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2]
    assert rundir.truncate_log(log, 2) == 0


# ---- item 8 (part): a bad setting leaves no stray directory -------------------------------------------


def test_bad_settings_fail_before_the_run_directory_exists(tiny, tmp_path):
    for bad, match in [({"diffusion.parameterization": "q"}, "'diffusion.parameterization' must be one of eps, x, v"),
                       ({"train.steps": -5}, "'train.steps' must be >= 1; got -5"),
                       ({"train.batch_size": -4}, "'train.batch_size' must be >= 1; got -4"),
                       ({"train.minutes": 0}, "'train.minutes' must be a finite number > 0")]:
        with pytest.raises(ValueError, match=match):
            Trainer(tiny(**bad))
        assert not (tmp_path / "run").exists()


def test_a_run_failing_at_its_first_step_removes_the_directory_it_made(tiny, tmp_path, monkeypatch):
    def boom(self, batches):
        raise RuntimeError("first step failed")

    monkeypatch.setattr(Trainer, "train_step", boom)
    with pytest.raises(RuntimeError, match="first step failed"):
        Trainer(tiny()).fit()
    assert not (tmp_path / "run").exists()


# ---- item 9: resume with a changed config ------------------------------------------------------------


def test_resume_with_changed_batch_and_clip_says_what_changed(tiny):
    Trainer(tiny(**{"train.steps": 2})).fit()
    with pytest.warns(UserWarning, match=r"changed config \(data.num_frames: 4 -> 8; train.batch_size: 2 -> 4\)"):
        Trainer(tiny(**{"train.steps": 3, "train.batch_size": 4, "data.num_frames": 8}), resume=True)


# ---- items 11, 12: progress total, file modes ---------------------------------------------------------


def test_progress_total_follows_the_limit_that_ends_the_run_first():
    assert expected_last_step(100000, None, 0, 10, 1.0) == 100000
    assert expected_last_step(100000, 20, 0, 100, 60.0) == 2000  # 100 steps/min for 20 min
    assert expected_last_step(500, 20, 0, 100, 60.0) == 500
    assert expected_last_step(100000, 20, 1000, 100, 60.0) == 3000  # resumed at step 1000

    class Bar:
        n, total, refreshed = 0, 100000, 0

        def update(self, k):
            self.n += k

        def refresh(self):
            self.refreshed += 1

    now = [0.0]
    bar = BudgetBar(Bar(), 100000, 1.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 1.5
        bar.update(1)
    assert bar.total == 40 and bar.n == 10 and bar.refreshed >= 1  # 1 step / 1.5 s for 60 s


def test_all_checkpoint_files_share_one_mode(tmp_path):
    path = ck.save_checkpoint(tmp_path / "run", 1, model_state={"w": torch.ones(2)}, ema_state={"w": torch.ones(2)},
                              trainer_state={"step": 1}, config_yaml="name: x\n")
    modes = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    umask = os.umask(0)
    os.umask(umask)
    assert set(modes.values()) == {0o666 & ~umask}, modes
