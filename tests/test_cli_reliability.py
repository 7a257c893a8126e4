"""The command line under bad input and faults (issue 11): argument ranges at parse time,
non-finite values never written or scored, one-line errors instead of tracebacks."""


import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kinema.cli import main

from conftest import tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained tiny run (2 steps), shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "demo", *tiny_overrides(run, **{"train.steps": 2})]) == 0
    return run


def _nan_weights_copy(run, tmp_path):
    """A copy of the run's checkpoint with one NaN in the EMA weights; returns (dir, tensor name)."""
    import shutil

    src = run / "ckpt" / "step-00000002"
    dst = tmp_path / "nan-ckpt"
    shutil.copytree(src, dst)
    state = load_file(str(dst / "ema.safetensors"))
    name = sorted(state)[3]
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(dst / "ema.safetensors"))
    return dst, name


# ---- item 7: each bad argument is refused at parse time, with the range -------------------------------


@pytest.mark.parametrize("argv, message", [
    (["sample", "R", "--steps", "0"], "--steps: must be an integer >= 1, got 0"),
    (["sample", "R", "--frames", "0"], "--frames: must be an integer >= 1, got 0"),
    (["sample", "R", "--frames", "-1"], "--frames: must be an integer >= 1, got -1"),
    (["sample", "R", "--batch-size", "0"], "--batch-size: must be an integer >= 1, got 0"),
    (["sample", "R", "--num", "0"], "--num: must be an integer >= 1, got 0"),
    (["sample", "R", "--guidance", "nan"], "--guidance: must be a finite number, got nan"),
    (["sample", "R", "--guidance", "inf"], "--guidance: must be a finite number, got inf"),
    (["sample", "R", "--guidance-low=-inf"], "--guidance-low: must be a finite number"),
    (["sample", "R", "--guidance-interval", "none", "nan"], "--guidance-interval: must be a finite number, got nan"),
    (["sample", "R", "--eta", "-1"], "--eta: must be a finite number >= 0"),
    (["sample", "R", "--out", "x.avi"], "unknown video extension .avi; use one of .mp4, .gif, .png"),
    (["extend", "R", "--input", "i.mp4", "--frames", "8", "--overlap", "0"], "--overlap: must be an integer >= 1"),
    (["extend", "R", "--input", "i.mp4", "--frames", "8", "--window", "1"], "--window: must be an integer >= 2"),
    (["extend", "R", "--input", "i.mp4", "--frames", "8", "--out", "x"], "unknown video extension (none)"),
    (["upsample", "R", "--input", "i.mp4", "--size", "0"], "--size: must be an integer >= 1, got 0"),
    (["upsample", "R", "--input", "i.mp4", "--max-frames", "0"], "--max-frames: must be an integer >= 1"),
    (["upsample", "R", "--input", "i.mp4", "--guidance", "nan"], "--guidance: must be a finite number"),
    (["eval", "g", "--reference", "r", "--num", "0"], "--num: must be an integer >= 1"),
    (["eval", "g", "--reference", "r", "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    (["demo", "--minutes", "0"], "--minutes: must be a finite number > 0"),
])
def test_bad_arguments_are_refused_at_parse_time(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)  # "R" does not exist: the argument is refused before anything is opened
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.steps=-5", "'train.steps' must be >= 1; got -5"),
    ("train.batch_size=-4", "'train.batch_size' must be >= 1; got -4"),
    ("diffusion.parameterization=q", "'diffusion.parameterization' must be one of eps, x, v, got 'q'"),
])
def test_bad_config_values_fail_in_one_line_and_leave_no_directory(override, message, tmp_path, capsys):
    assert main(["train", "demo", *tiny_overrides(tmp_path / "run"), override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kinema train: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# ---- items 1 and 3 through the command line --------------------------------------------------------------


def test_train_into_an_existing_run_is_refused_without_resume(run_dir, capsys):
    before = sorted(p.name for p in (run_dir / "ckpt").iterdir())
    assert main(["train", "demo", *tiny_overrides(run_dir, **{"train.steps": 2})]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == before


def test_nonfinite_weights_are_refused_by_sample_and_eval(run_dir, tmp_path, capsys):
    ckpt, name = _nan_weights_copy(run_dir, tmp_path)
    out = tmp_path / "s.mp4"
    assert main(["sample", str(ckpt), "--num", "1", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt / 'ema.safetensors'} holds non-finite weights" in err and repr(name) in err
    assert not out.exists()
    ref = tmp_path / "ref.npz"
    np.savez(ref, videos=np.zeros((2, 4, 16, 16, 3), np.uint8))
    assert main(["eval", str(ckpt), "--reference", str(ref), "--metric", "psnr", "--frames", "4", "--num", "1",
                 "--out", str(tmp_path / "r.json")]) == 2
    assert "non-finite weights" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_a_sample_batch_with_nan_stops_naming_the_checkpoint(run_dir, tmp_path, capsys, monkeypatch):
    from kinema.pipelines import sample

    monkeypatch.setattr(sample.SamplerSettings, "__call__", lambda self, d, z, **k: torch.full_like(z, float("nan")))
    out = tmp_path / "s.mp4"
    assert main(["sample", str(run_dir), "--num", "1", "--steps", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sampling from checkpoint" in err and "step-00000002" in err and "samples 1-1 of 1 contain NaN/inf" in err
    assert not out.exists()
    assert main(["eval", str(run_dir), "--reference", str(tmp_path), "--metric", "psnr", "--num", "1",
                 "--frames", "4"]) == 2
    assert "generated side: sampling from checkpoint" in capsys.readouterr().err


def test_eval_refuses_nonfinite_generated_features(monkeypatch):
    from kinema.metrics.sources import ClipSet
    from kinema.pipelines import evaluate as ev
    from kinema.validate import NonFiniteError

    clips = ClipSet("gen", 2, 4, "h", lambda: iter(np.zeros((2, 4, 8, 8, 3), np.uint8)))
    monkeypatch.setattr(ev, "extract_features", lambda *a, **k: np.full((2, 3), np.nan))
    monkeypatch.setattr(ev, "resolve_weights", lambda *a: __file__)
    monkeypatch.setattr(ev, "load_i3d", lambda *a: None)
    monkeypatch.setattr(ev, "cached_stats", lambda cache, key, fn: (None, True))
    with pytest.raises(NonFiniteError, match="fvd features of the generated clips"):
        ev.evaluate(clips, clips, "fvd", progress=False)


# ---- item 8: messages --------------------------------------------------------------------------------------


def test_npz_errors_name_the_file_and_the_side(tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, videos=np.zeros((2, 4, 8, 8, 3), np.uint8))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    floats = tmp_path / "floats.npz"
    np.savez(floats, videos=np.zeros((2, 4, 8, 8, 3), np.float32))
    objects = tmp_path / "objects.npz"
    np.savez(objects, videos=np.array([{"a": 1}], dtype=object))
    args = ["--metric", "psnr", "--frames", "4", "--out", str(tmp_path / "r.json")]
    assert main(["eval", str(bad), "--reference", str(good), *args]) == 2
    assert f"cannot read generated {bad}" in capsys.readouterr().err
    assert main(["eval", str(good), "--reference", str(floats), *args]) == 2
    assert f"reference {floats} (array 'videos') must be uint8" in capsys.readouterr().err
    assert main(["eval", str(good), "--reference", str(objects), *args]) == 2
    assert f"cannot read reference {objects}" in capsys.readouterr().err


def test_all_undecodable_folder_counts_the_files_it_tried(tmp_path):
    from kinema.data.io import VideoDecodeError
    from kinema.data.video_folder import VideoFolder
    from tests_helpers import write_mp4

    rng = np.random.default_rng(0)
    for i in range(2):
        write_mp4(tmp_path / f"v{i}.mp4", rng, frames=6, size=16)
    ds = VideoFolder(tmp_path, num_frames=4, size=16)
    for p in ds.files:
        p.write_bytes(b"broken now")
    with pytest.warns(UserWarning), pytest.raises(VideoDecodeError, match=r"^all 2 videos tried from index 0 failed"):
        ds[0]


class _Opaque:
    pass


def test_tracebacks_become_one_line_errors(run_dir, tmp_path, capsys, monkeypatch):
    # a .pth that weights_only refuses
    pth = tmp_path / "inception.pth"
    torch.save({"x": _Opaque()}, pth)
    npz = tmp_path / "c.npz"
    np.savez(npz, videos=np.zeros((1, 2, 8, 8, 3), np.uint8))
    assert main(["eval", str(npz), "--reference", str(npz), "--metric", "fid", "--weights", str(pth),
                 "--frames", "2", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kinema eval: error: ") and "refused by torch.load(weights_only=True)" in err
    assert err.count("\n") == 1

    # a YAML tag in a checkpoint's config
    import shutil

    ckpt = tmp_path / "tagged"
    shutil.copytree(run_dir / "ckpt" / "step-00000002", ckpt)
    (ckpt / "config.yaml").write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    assert main(["sample", str(ckpt), "--num", "1", "--out", str(tmp_path / "s.gif")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {ckpt / 'config.yaml'}: could not determine a constructor" in err and err.count("\n") == 1

    # a read-only run directory (simulated: the tests may run as root, who ignores file modes)
    import os

    import kinema.train.rundir as rundir

    real_open = os.open

    def read_only(path, *a, **k):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(rundir.os, "open", read_only)
    assert main(["train", "demo", *tiny_overrides(tmp_path / "ro", **{"train.steps": 1})]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kinema train: error: cannot write to run directory") and err.count("\n") == 1
    monkeypatch.setattr(rundir.os, "open", real_open)

    # the non-finite loss stop
    from kinema.train.loop import StepOutput, Trainer

    def nan_step(self, batches):
        self.step += 1
        return StepOutput(torch.tensor(float("nan")), torch.tensor(0.0))

    monkeypatch.setattr(Trainer, "train_step", nan_step)
    assert main(["train", "demo", *tiny_overrides(tmp_path / "nan", **{"train.steps": 2})]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kinema train: error: training loss became NaN/inf at step 1") and err.count("\n") == 1


def test_out_extension_is_checked_before_sampling(run_dir, tmp_path, capsys, monkeypatch):
    from kinema.pipelines import sample

    called = []
    monkeypatch.setattr(sample, "sample_videos", lambda *a, **k: called.append(1))
    with pytest.raises(SystemExit):
        main(["sample", str(run_dir), "--out", str(tmp_path / "x.webm")])
    assert called == [] and "unknown video extension .webm" in capsys.readouterr().err
