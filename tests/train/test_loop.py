import json

import pytest
import torch

from kinema.train import loop
from kinema.train.loop import NonFiniteLossError, Trainer, budget_steps, lr_factor


def _losses(trainer):
    return {r["step"]: r["loss"] for r in trainer.history}


def test_resume_continues_exactly(tiny, tmp_path):
    """An interrupted run that resumes produces the same next losses as an uninterrupted one."""
    extra = {"model.unet.dropout": 0.1, "train.steps": 6, "train.ckpt_every": 3}
    full = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "a")}))
    full.fit()
    first = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "b"), "train.steps": 3}))
    first.fit()
    resumed = Trainer(tiny(**{**extra, "train.out_dir": str(tmp_path / "b")}), resume=True)
    assert resumed.step == 3
    resumed.fit()
    a, b = _losses(full), _losses(resumed)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), f"step {step}: {a[step]} vs {b[step]}"
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_run_directory_contents(tiny):
    cfg = tiny()
    Trainer(cfg).fit()
    out = cfg.train.out_dir
    from pathlib import Path

    out = Path(out)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 and "videos_per_s" in r for r in rows)
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "config.yaml").exists()
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step-00000002", "step-00000004"]


class _NaNData(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"video": torch.full((3, 4, 16, 16), float("nan")), "caption": ""}


def test_nan_loss_stops_with_the_step(tiny):
    trainer = Trainer(tiny(), dataset=_NaNData())
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf at step 1; no checkpoint was written"):
        trainer.fit()


def test_config_errors_are_plain(tiny):
    with pytest.raises(ValueError, match=r"batch_size=3 must be a multiple"):
        Trainer(tiny(**{"train.batch_size": 3, "train.grad_accum": 2}))
    with pytest.raises(ValueError, match=r"in_channels=1 .* 3-channel"):
        Trainer(tiny(**{"model.unet.in_channels": 1}))


def test_grad_accumulation_runs_and_preview(tiny, tmp_path):
    trainer = Trainer(tiny(**{"train.batch_size": 4, "train.grad_accum": 2, "train.steps": 2}))
    assert trainer.micro_batch == 2
    trainer.fit()
    path = trainer.preview(tmp_path / "p.gif", num=2)
    assert path.stat().st_size > 0


def test_warmup_and_cosine_decay():
    assert lr_factor(0, 10) == pytest.approx(0.1)
    assert lr_factor(9, 10) == 1.0 and lr_factor(100, 10) == 1.0 and lr_factor(0, 0) == 1.0
    assert lr_factor(10, 10, "cosine", 110) == pytest.approx(1.0)
    assert lr_factor(60, 10, "cosine", 110) == pytest.approx(0.5)
    assert lr_factor(110, 10, "cosine", 110, min_ratio=0.1) == pytest.approx(0.1)
    factors = [lr_factor(s, 10, "cosine", 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    with pytest.raises(ValueError, match="linear"):
        lr_factor(20, 10, "linear", 110)


def test_budget_steps_extrapolates_the_measured_rate():
    assert budget_steps(100, 0, 50.0, minutes=2, max_steps=10_000) == 240  # 2 steps/s, 70 s left
    assert budget_steps(150, 100, 25.0, minutes=1, max_steps=10_000) == 220  # resumed at 100: the rate since then
    assert budget_steps(100, 0, 50.0, minutes=2, max_steps=200) == 200  # train.steps ends first
    assert budget_steps(100, 0, 130.0, minutes=2, max_steps=10_000) == 100  # budget spent: the schedule ends now
    assert budget_steps(0, 0, 0.0, minutes=2, max_steps=500) == 500  # nothing timed yet


class _Clock:
    """A stand-in for the ``time`` module: one second passes per training step."""

    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now


def _clocked_run(tiny, monkeypatch, out_dir, **extra):
    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    trainer = Trainer(tiny(**{"train.steps": 1000, "train.minutes": 0.5, "train.warmup_steps": 2,
                              "train.lr_schedule": "cosine", "train.lr_min_ratio": 0.1, "train.ckpt_every": 0,
                              "train.lr": 1e-3, "train.out_dir": str(out_dir), **extra}))
    step = trainer.train_step

    def timed_step(batches):
        out = step(batches)
        clock.now += 1.0
        return out

    monkeypatch.setattr(trainer, "train_step", timed_step)
    trainer.fit()
    return [r["lr"] for r in trainer.history]


def test_lr_decay_over_minutes_ends_the_cosine_with_the_budget(tiny, monkeypatch, tmp_path):
    """With train.lr_decay_over=minutes the cosine reaches lr * lr_min_ratio as the 30 s budget runs
    out (31 one-second steps), though train.steps is 1000; over steps it has barely decayed."""
    lrs = _clocked_run(tiny, monkeypatch, tmp_path / "minutes", **{"train.lr_decay_over": "minutes"})
    assert len(lrs) == 31
    assert lrs[-1] == pytest.approx(1e-4)
    assert lrs[2] > 0.99e-3 and all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert lrs[15] == pytest.approx(1e-3 * lr_factor(15, 2, "cosine", 30, 0.1))
    by_steps = _clocked_run(tiny, monkeypatch, tmp_path / "steps")
    assert len(by_steps) == 31 and by_steps[-1] > 0.99e-3


def test_lr_decay_over_minutes_needs_a_budget_and_a_cosine(tiny):
    with pytest.raises(ValueError, match="train.minutes is null"):
        Trainer(tiny(**{"train.lr_decay_over": "minutes", "train.lr_schedule": "cosine"}))
    with pytest.raises(ValueError, match="needs train.lr_schedule=cosine"):
        Trainer(tiny(**{"train.lr_decay_over": "minutes", "train.minutes": 1}))
    with pytest.raises(ValueError, match="lr_decay_over"):
        Trainer(tiny(**{"train.lr_decay_over": "hours"}))
