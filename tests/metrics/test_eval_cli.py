import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kinema.cli import main
from kinema.metrics.inception import FIDInceptionV3

from conftest import tiny_overrides
from metrics_helpers import digit_clips, random_i3d
from tests_helpers import write_mp4


def mp4_folder(path, seed, n=2, frames=9, size=16):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_mp4(path / f"v{i}.mp4", rng, frames=frames, size=size)
    return path


def test_eval_psnr_ssim_on_two_mp4_folders(tmp_path, capsys):
    a = mp4_folder(tmp_path / "a", 0)
    out = tmp_path / "r.json"
    assert main(["eval", str(a), "--reference", str(a), "--metric", "psnr", "ssim", "--frames", "9",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["metric"] for r in rows] == ["psnr", "ssim"]
    assert rows[0]["value"] == float("inf") and rows[1]["value"] == pytest.approx(1.0)
    assert "psnr" in capsys.readouterr().out
    b = mp4_folder(tmp_path / "b", 1)
    assert main(["eval", str(a), "--reference", str(b), "--metric", "ssim", "--frames", "9", "--out", str(out)]) == 0
    assert json.loads(out.read_text())[0]["value"] < 0.99


def test_missing_weights_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "cache"))
    a = mp4_folder(tmp_path / "a", 0)
    assert main(["eval", str(a), "--reference", str(a), "--frames", "9"]) == 2
    assert "kinema assets fetch i3d" in capsys.readouterr().err
    assert main(["eval", str(a), "--reference", str(a), "--metric", "fid", "--frames", "9"]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["assets", "list"]) == 0
    assert "missing" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_fvd_on_mp4_folders_with_random_weights(tmp_path):
    i3d = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in random_i3d(0).state_dict().items()}, str(i3d))
    a, b = mp4_folder(tmp_path / "a", 0, n=2), mp4_folder(tmp_path / "b", 1, n=2)
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    base = ["--cache-dir", str(cache), "--out", str(out)]
    assert main(["eval", str(a), "--reference", str(b), "--metric", "fvd", "--weights", str(i3d),
                 "--frames", "9", *base]) == 0
    fvd = json.loads(out.read_text())[0]
    assert fvd["value"] > 0 and fvd["reference_stats_cached"] is False and fvd["num_features_reference"] == 2
    assert len(list((cache / "stats").glob("*.npz"))) == 1  # reused by the next evaluation against b


@pytest.mark.slow
def test_eval_fid_is_frame_level(tmp_path):
    torch.manual_seed(0)
    inception = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in FIDInceptionV3().state_dict().items()}, str(inception))
    a = mp4_folder(tmp_path / "a", 0, n=1)
    out, cache = tmp_path / "r.json", tmp_path / "cache"
    base = ["--cache-dir", str(cache), "--out", str(out)]
    assert main(["eval", str(a), "--reference", str(a), "--metric", "fid", "--weights", str(inception),
                 "--num", "1", "--frames", "2", *base]) == 0
    fid = json.loads(out.read_text())[0]
    assert fid["num_features_generated"] == 2 and abs(fid["value"]) < 1e-6  # frame level: 1 clip x 2 frames


@pytest.mark.slow
def test_eval_samples_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "demo", *tiny_overrides(run, **{"train.steps": 2})]) == 0
    ref = tmp_path / "ref.npz"
    clips = digit_clips(0, 3, frames=4, size=16)
    np.savez(ref, videos=np.repeat(clips, 3, axis=-1))
    out = tmp_path / "r.json"
    assert main(["eval", str(run), "--reference", str(ref), "--metric", "psnr", "ssim", "--num", "3",
                 "--frames", "4", "--steps", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["num_generated"] == 3 and rows[0]["generated"].endswith("step-00000002")
    assert np.isfinite(rows[0]["value"]) and -1 <= rows[1]["value"] < 1
