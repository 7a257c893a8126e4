"""The Imagen Video cascade: shapes checked stage to stage before any sampling (one error naming both
stages), SR stages refusing the wrong input or a base model standing in for one, per-stage settings,
and an end-to-end `kinema cascade` on tiny random-init checkpoints."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.config import load_config
from kinema.data.io import write_video
from kinema.pipelines.cascade import StageSettings, parse_stage_list, plan_cascade, run_cascade
from kinema.pipelines.sample import lowres_conditioning, sample_videos
from kinema.system import build_system, load_system
from kinema.train.loop import Trainer
from model_helpers import randomize


def stage_cfg(tmp_path, name, frames, size, spatial=1, temporal=1, **extra):
    over = {"model.unet.in_channels": 1, "data.dataset": "moving_digits", "data.num_frames": frames,
            "data.size": size, "train.steps": 1, "train.ckpt_every": 1, "train.batch_size": 1, "sample.steps": 2}
    if spatial > 1 or temporal > 1:
        over.update({"model.unet.extra_in_channels": 1, "model.unet.scalar_conditions": "[lowres_logsnr]",
                     "sr.spatial_factor": spatial, "sr.temporal_factor": temporal, "sr.aug_max": 0.5,
                     "sr.sample_aug": 0.1})
    over.update(extra)
    return load_config(None, tiny_overrides(tmp_path / name, **over))


def systems(tmp_path, *shapes):
    return [build_system(stage_cfg(tmp_path, f"s{i}", *shape)) for i, shape in enumerate(shapes)]


def test_plan_accepts_a_matching_cascade_and_names_both_stages_on_a_mismatch(tmp_path):
    good = systems(tmp_path, (4, 8), (8, 8, 1, 2), (8, 16, 2, 1))
    plan = plan_cascade(good)
    assert [p.makes for p in plan] == [(1, 4, 8), (1, 8, 8), (1, 8, 16)]
    assert plan[1].takes == (1, 4, 8) and plan[2].takes == (1, 8, 8)
    bad = systems(tmp_path, (4, 8), (8, 16, 2, 1))  # SSR expects 8 frames of 8^2, base makes 4 frames
    with pytest.raises(ValueError, match=r"stage 1 outputs 4 frames x 8x8 x 1 channel but stage 2 expects "
                                         r"8 frames x 8x8 x 1 channel"):
        plan_cascade(bad)


def test_a_base_model_given_as_an_sr_stage_and_an_sr_stage_as_the_base_are_errors(tmp_path):
    base, other_base, ssr = systems(tmp_path, (4, 8), (4, 16), (4, 16, 2, 1))
    with pytest.raises(ValueError, match="stage 2 is not a super-resolution stage"):
        plan_cascade([base, other_base])
    with pytest.raises(ValueError, match="must be a base model"):
        plan_cascade([ssr])
    with pytest.raises(ValueError, match="not a super-resolution stage"):
        lowres_conditioning(base, torch.zeros(1, 1, 4, 8, 8))


def test_an_sr_stage_fed_the_wrong_size_or_frame_count_is_one_clear_error(tmp_path):
    (ssr,) = systems(tmp_path, (8, 16, 2, 2))
    cond = lowres_conditioning(ssr, torch.zeros(2, 1, 4, 8, 8), level=0.0)
    assert cond.lowres.shape == (2, 1, 4, 8, 8) and torch.equal(cond.lowres, torch.zeros(2, 1, 4, 8, 8))
    for wrong in [(2, 1, 8, 8, 8), (2, 1, 4, 16, 16), (2, 3, 4, 8, 8)]:
        with pytest.raises(ValueError, match=r"takes \[B, C, F, H, W\] = \[B, 1, 4, 8, 8\]"):
            lowres_conditioning(ssr, torch.zeros(wrong))


def test_settings_are_checked_before_any_sampling(tmp_path):
    base, tsr = systems(tmp_path, (4, 8), (8, 8, 1, 2))
    calls = []
    base.model.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="stage 2: unknown sampler"):
        run_cascade([base, tsr], 1, settings=[StageSettings(), StageSettings(sampler="euler")], progress=False)
    with pytest.raises(ValueError, match="stage 1: an augmentation level needs an SR stage"):
        run_cascade([base, tsr], 1, settings=[StageSettings(aug=0.1), StageSettings()], progress=False)
    with pytest.raises(ValueError, match="no stage of the cascade is text-conditional"):
        run_cascade([base, tsr], 1, prompts=["a digit"], progress=False)
    assert not calls, "nothing was sampled"
    with pytest.raises(ValueError, match="is a super-resolution stage"):
        sample_videos(tsr, 1, steps=1, progress=False)
    assert parse_stage_list("64,,32", 3, int, "--stage-steps") == [64, None, 32]
    assert parse_stage_list("8", 2, int, "--stage-steps") == [8, 8]
    with pytest.raises(ValueError, match="--stage-steps has 2 values for 3 stages"):
        parse_stage_list("8,8", 3, int, "--stage-steps")


def train_stage(tmp_path, name, *shape, **extra) -> Path:
    cfg = stage_cfg(tmp_path, name, *shape, **extra)
    Trainer(cfg).fit()
    return ckpt_io.resolve_checkpoint(Path(cfg.train.out_dir))


@pytest.mark.slow
def test_kinema_cascade_end_to_end_on_tiny_checkpoints(tmp_path, capsys):
    base = train_stage(tmp_path, "base", 4, 8)
    tsr = train_stage(tmp_path, "tsr", 8, 8, 1, 2)
    ssr = train_stage(tmp_path, "ssr", 8, 16, 2, 1, **{"model.unet.temporal_mixing": "[conv,conv]",
                                                        "model.unet.attn_levels": "[]",
                                                        "model.unet.middle_attention": False})
    out = tmp_path / "video.png"
    assert main(["cascade", str(base), str(tsr), str(ssr), "--num", "2", "--stage-steps", "2,3,2",
                 "--stage-sampler", "ddim,ddpm,", "--keep-stages", "--out", str(out)]) == 0
    assert "cascade of 3 stages wrote 2 videos of (1, 8, 16, 16)" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "video.stage1.png").exists() and (tmp_path / "video.stage2.png").exists()
    # a mismatch is one error line, nothing written
    bad = tmp_path / "bad.png"
    assert main(["cascade", str(base), str(ssr), "--out", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "outputs 4 frames x 8x8 x 1 channel" in err and "expects" in err
    assert not bad.exists()
    # kinema upsample with an SR stage conditions on the input, which must have the stage's input shape
    small, wrong = tmp_path / "small.gif", tmp_path / "wrong.gif"
    g = torch.Generator().manual_seed(0)  # distinct frames (a GIF merges identical ones)
    write_video(small, torch.rand(1, 1, 8, 8, 8, generator=g) * 2 - 1, fps=4)
    write_video(wrong, torch.rand(1, 1, 8, 16, 16, generator=g) * 2 - 1, fps=4)
    assert main(["upsample", str(ssr), "--input", str(small), "--steps", "2", "--out", str(tmp_path / "up.gif")]) == 0
    assert main(["upsample", str(ssr), "--input", str(wrong), "--steps", "2", "--out", str(tmp_path / "no.gif")]) == 2
    assert "[B, 1, 8, 8, 8] low-resolution videos; the input video is [1, 1, 8, 16, 16]" in capsys.readouterr().err
    assert not (tmp_path / "no.gif").exists()
    # the base stays an ordinary model: kinema extend works on it
    system, _ = load_system(base, device="cpu")
    assert not system.is_sr_stage
    clip = tmp_path / "one.gif"
    assert main(["sample", str(base), "--num", "1", "--steps", "2", "--out", str(clip)]) == 0
    assert main(["extend", str(base), "--input", str(clip), "--frames", "6", "--steps", "2",
                 "--out", str(tmp_path / "long.gif")]) == 0


def test_a_text_cascade_guides_the_text_stage_and_passes_its_output_up(tmp_path):
    text = {"model.unet.text_dim": 16, "model.text.encoder": "builtin", "model.text.dim": 16,
            "model.text.depth": 1, "model.text.heads": 2, "model.text.max_length": 8}
    base = build_system(stage_cfg(tmp_path, "base", 4, 8, **text))
    (ssr,) = systems(tmp_path, (4, 16, 2, 1))
    for s in (base, ssr):
        randomize(s.model, std=0.05)
    seen = []
    ssr.model.register_forward_pre_hook(lambda m, args: seen.append(args[2].lowres))
    with pytest.raises(ValueError, match="stage 2: guidance 2 needs a prompt"):
        run_cascade([base, ssr], 2, prompts=["a"], settings=[StageSettings(), StageSettings(guidance=2.0)],
                    progress=False)
    outs = run_cascade([base, ssr], 2, prompts=["a red circle", "a blue square"], keep=True, progress=False,
                       settings=[StageSettings(steps=2, guidance=3.0), StageSettings(steps=2, aug=0.0)])
    assert [tuple(o.shape) for o in outs] == [(2, 1, 4, 8, 8), (2, 1, 4, 16, 16)]
    assert torch.equal(seen[0], outs[0]), "the SR stage reads the base's output, unaugmented at t_aug = 0"


def train_walt_stage(tmp_path, name, frames, size, spatial=1) -> Path:
    """A tiny 1-channel W.A.L.T stage trained one step; with ``spatial > 1`` an SR stage that reads
    the low-resolution video and its augmentation level (the same ``sr:`` keys as a U-Net stage)."""
    over = {"model.name": "walt", "model.walt.in_channels": 1, "model.walt.hidden_dim": 16, "model.walt.depth": 2,
            "model.walt.heads": 2, "model.walt.spatiotemporal_window": "[0,0,0]", "model.walt.max_frames": 8,
            "data.dataset": "moving_digits", "data.num_frames": frames, "data.size": size,
            "train.out_dir": str(tmp_path / name), "train.batch_size": 1, "train.steps": 1, "train.warmup_steps": 1,
            "train.ckpt_every": 1, "train.sample_every": 0, "train.progress": False, "train.tensorboard": False,
            "sample.steps": 2}
    if spatial > 1:
        over.update({"model.walt.extra_in_channels": 1, "model.walt.scalar_conditions": "[lowres_logsnr]",
                     "sr.spatial_factor": spatial, "sr.aug_max": 0.5, "sr.sample_aug": 0.1})
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    Trainer(cfg).fit()
    return ckpt_io.resolve_checkpoint(Path(cfg.train.out_dir))


@pytest.mark.slow
def test_kinema_cascade_with_a_walt_sr_stage_after_a_unet_or_walt_base(tmp_path, capsys):
    unet_base = train_stage(tmp_path, "unet_base", 4, 8)
    walt_base = train_walt_stage(tmp_path, "walt_base", 4, 8)
    walt_ssr = train_walt_stage(tmp_path, "walt_ssr", 4, 16, spatial=2)
    system, _ = load_system(walt_ssr, device="cpu")
    assert system.is_sr_stage and system.cfg.model.name == "walt"
    for base in (unet_base, walt_base):
        out = tmp_path / f"{base.parent.name}.png"
        assert main(["cascade", str(base), str(walt_ssr), "--num", "2", "--stage-steps", "2,2",
                     "--keep-stages", "--out", str(out)]) == 0
        assert "cascade of 2 stages wrote 2 videos of (1, 4, 16, 16)" in capsys.readouterr().out
        assert out.exists() and (tmp_path / f"{base.parent.name}.stage1.png").exists()
    # the W.A.L.T SR stage reads the low-resolution input: another input, another video
    randomize(system.model, std=0.05)
    seen = []
    system.model.register_forward_pre_hook(lambda m, args: seen.append(args[2].lowres))
    low = torch.rand(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    a = sample_videos(system, 2, steps=2, seed=0, cond=lowres_conditioning(system, low, level=0.0), progress=False)
    b = sample_videos(system, 2, steps=2, seed=0, cond=lowres_conditioning(system, -low, level=0.0), progress=False)
    assert torch.equal(seen[0], low) and (a - b).abs().max() > 1e-3
