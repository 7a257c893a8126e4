import av
import numpy as np
import pytest
import torch

from kinema.checkpoint import load_weights, resolve_checkpoint
from kinema.cli import main
from tests_helpers import write_mp4

from conftest import tiny_overrides


def test_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "sample", "demo", "config"):
        assert cmd in out


def test_config_command(capsys):
    assert main(["config", "--list"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["config", "demo", "train.batch_size=4"]) == 0
    assert "batch_size: 4" in capsys.readouterr().out
    assert main(["config", "demo", "train.batchsize=4"]) == 2
    assert "did you mean 'batch_size'" in capsys.readouterr().err


def test_train_resume_sample_on_a_video_folder(tmp_path, capsys):
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mp4(folder / f"clip{i}.mp4", rng, frames=12, size=24)
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 10)
    run = tmp_path / "run"
    args = tiny_overrides(run, **{"data.dataset": "folder", "data.path": str(folder), "train.steps": 2})
    assert main(["train", "demo", *args]) == 0
    assert main(["train", "demo", *args, "train.steps=4", "--resume"]) == 0
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step-00000002", "step-00000004"]
    out = tmp_path / "s.mp4"
    assert main(["sample", str(run), "--num", "1", "--steps", "3", "--out", str(out)]) == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)
    assert main(["sample", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_demo_writes_samples_and_prints_the_consistency_score(tmp_path, capsys):
    """`kinema demo` end to end at toy size: a text-to-video model (demo_text), samples in three formats
    with their prompts listed, and the temporal-consistency line (kinema.metrics.consistency).
    Trained by two processes (--procs 2, what a CPU with 2 cores gets), it ends with the weights one
    process gets from the same global batch."""
    out = tmp_path / "demo"
    overrides = [o for o in tiny_overrides(out, **{"train.steps": 2, "sample.steps": 2}) if not o.startswith("train.out_dir")]
    assert main(["demo", "--out", str(out), "--num", "2", "--procs", "1", *overrides]) == 0
    printed = capsys.readouterr().out
    assert all((out / f"samples.{ext}").exists() for ext in ("gif", "mp4", "png"))
    line = next(x for x in printed.splitlines() if x.startswith("temporal consistency: "))
    passed, num = line.split()[2].split("/")
    assert num == "2" and 0 <= int(passed) <= 2 and "colour" in line
    assert "  row 1: a red circle moving left" in printed and "  row 2: a blue square moving up" in printed  # text-to-video
    follow = next(x for x in printed.splitlines() if x.startswith("prompt following: "))
    assert all(f"{what} " in follow and "/2" in follow for what in ("colour", "shape", "direction"))

    assert main(["demo", "--out", str(tmp_path / "two"), "--num", "2", "--procs", "2", *overrides]) == 0
    assert "on cpu, 2 processes" in capsys.readouterr().out
    one, two = (load_weights(resolve_checkpoint(d), ema=True) for d in (out, tmp_path / "two"))
    assert resolve_checkpoint(tmp_path / "two").name == resolve_checkpoint(out).name == "step-00000002"
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=2e-6, msg=lambda m: f"{k}: {m}")


def test_demo_processes_option():
    """--procs: 'auto' is 2 on a CPU with 2+ cores (1 on a GPU or with an odd batch); bad values are refused by name."""
    from kinema.cli import demo_processes
    from kinema.train.distributed import usable_cores

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert demo_processes("auto", cpu, 8) == (2 if usable_cores() >= 2 else 1)
    assert demo_processes("auto", gpu, 8) == 1 and demo_processes("auto", cpu, 3) == 1
    assert demo_processes("3", cpu, 6) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"--procs must be 'auto' or a positive integer, got '{bad}'"):
            demo_processes(bad, cpu, 8)
    with pytest.raises(ValueError, match=r"train.batch_size=6 must be a multiple of --procs 4"):
        demo_processes("4", cpu, 6)
    with pytest.raises(ValueError, match="the demo trains on cuda:0"):
        demo_processes("2", gpu, 8)
