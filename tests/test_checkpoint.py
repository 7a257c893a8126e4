import pytest
import torch

from kinema import checkpoint as ck
from kinema.train.ema import EMA


def _save(run, step, keep=3, value=1.0):
    return ck.save_checkpoint(run, step, model_state={"w": torch.full((2, 2), value)},
                              ema_state={"w": torch.full((2, 2), value + 1)},
                              trainer_state={"step": step, "opt": {"lr": torch.tensor(0.1)}},
                              config_yaml="name: x\n", keep_last=keep)


def test_save_resolve_and_load(tmp_path):
    run = tmp_path / "run"
    for step in (1, 2, 3, 4):
        _save(run, step, keep=2, value=float(step))
    found = ck.list_checkpoints(run)
    assert [p.name for p in found] == ["step-00000003", "step-00000004"], "keeps only the newest 2"
    latest = ck.resolve_checkpoint(run)
    assert latest == found[-1] and ck.resolve_checkpoint(run / "ckpt") == latest
    assert ck.load_weights(latest, ema=False)["w"][0, 0].item() == 4.0
    assert ck.load_weights(latest, ema=True)["w"][0, 0].item() == 5.0
    state = ck.load_trainer_state(latest)  # weights_only=True inside
    assert state["step"] == 4
    assert ck.load_meta(latest)["step"] == 4


def test_partial_write_is_ignored(tmp_path):
    run = tmp_path / "run"
    _save(run, 1)
    (run / "ckpt" / ".tmp-step-00000002-123").mkdir()  # a crash mid-write leaves only a hidden temp dir
    (run / "ckpt" / "step-00000003").mkdir()  # or a directory without meta.json
    assert ck.resolve_checkpoint(run).name == "step-00000001"


def test_missing_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ck.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        ck.resolve_checkpoint(tmp_path)


def test_trainer_state_refuses_pickled_objects(tmp_path):
    run = tmp_path / "run"
    path = _save(run, 1)
    torch.save({"step": 1, "evil": object()}, path / "trainer.pt")
    with pytest.raises(Exception):
        ck.load_trainer_state(path)


def test_model_mismatch_is_explained(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"does not fit this model.*other shapes.*weight"):
        ck.load_model_state(model, {"weight": torch.zeros(5, 5), "bias": torch.zeros(2)}, "ckpt-x")
    with pytest.raises(ValueError, match="missing"):
        ck.load_model_state(model, {"weight": torch.zeros(2, 3)}, "ckpt-x")


def test_ema_update_rule():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    model.weight.data.fill_(1.0)
    ema.update(model, step=0)
    assert ema.shadow["weight"].item() == pytest.approx(0.1)
    ema.update(model, step=1)
    assert ema.shadow["weight"].item() == pytest.approx(0.19)
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay(0) == pytest.approx(0.1) and warm.current_decay(10**6) == 0.999
    other = torch.nn.Linear(1, 1, bias=False)
    ema.copy_to(other)
    assert other.weight.item() == pytest.approx(0.19)
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)
