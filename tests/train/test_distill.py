"""Distillation end to end: a tiny trained teacher distilled for a round, a guided student that follows
w, and `kinema distill` (stages as run directories, resume, the student's steps)."""

import json

import pytest
import torch

from toy_backbone import ToyBackbone, ToyConfig  # registers the "toy" backbone
from conftest import tiny_overrides
from kinema.cli import main
from kinema.config import load_config
from kinema.data.synthetic import BouncingShapes
from kinema.diffusion.distill import DistillationObjective, teacher_denoiser, with_guidance_weight
from kinema.diffusion.objective import Denoiser, DiffusionObjective, LocalRandom, TrainBatch
from kinema.diffusion.samplers import sample_ddim
from kinema.diffusion.schedule import Schedule, sampling_grid
from kinema.train.distill import plan
from kinema.conditioning import Conditioning
from kinema.system import build_model
from model_helpers import randomize

SCHEDULE = Schedule()


def fit(objective, parts, x, cond, steps, lr, seed=0):
    """Adam on ``parts["model"]`` for ``steps`` full-batch steps of ``objective``."""
    model = parts["model"]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = LocalRandom(torch.Generator().manual_seed(seed), x.shape[0])
    for _ in range(steps):
        loss, _ = objective(parts, TrainBatch(x, cond, {}), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def unet(tmp_path, **extra):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"data.size": 8, **extra}))
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.mark.slow
def test_a_distilled_round_beats_the_teachers_own_single_step(tmp_path):
    """Salimans & Ho 2022: after one round, the student's N=1 step is closer to the teacher's 2 DDIM steps
    than the teacher's own single step is (measured on fresh noise)."""
    x = torch.stack([BouncingShapes(num_frames=4, size=8, length=8, seed=0)[i]["video"] for i in range(8)])
    teacher = fit(DiffusionObjective(SCHEDULE), {"model": unet(tmp_path)}, x, None, steps=60, lr=3e-3)
    teacher.requires_grad_(False)
    student = unet(tmp_path)
    student.load_state_dict(teacher.state_dict())
    student.requires_grad_(True)
    objective = DistillationObjective(SCHEDULE, "progressive", student_steps=1)
    student = fit(objective, {"model": student, "teacher": teacher}, x, None, steps=60, lr=1e-3, seed=1)

    z = torch.randn(16, 3, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        denoise = lambda net: (lambda zz, lam: Denoiser(net, "v")(zz, lam))  # noqa: E731
        two = sample_ddim(denoise(teacher), z, sampling_grid(SCHEDULE, 2))
        teacher_one = sample_ddim(denoise(teacher), z, sampling_grid(SCHEDULE, 1))
        student_one = sample_ddim(denoise(student), z, sampling_grid(SCHEDULE, 1))
    err_teacher = (teacher_one - two).pow(2).mean().item()
    err_student = (student_one - two).pow(2).mean().item()
    assert err_student < 0.6 * err_teacher, (err_student, err_teacher)


def test_a_guided_student_follows_w_as_the_guided_teacher_does():
    """Meng et al. 2023 stage one: the student takes w as input; after distillation its output moves with
    w in the direction (and by about the size) the two-pass guided teacher's does, in one pass."""
    torch.manual_seed(0)
    teacher = randomize(ToyBackbone(ToyConfig(width=16, num_classes=3)), std=0.3).requires_grad_(False)
    student = ToyBackbone(ToyConfig(width=16, num_classes=3, scalar_conditions=("guidance_weight",)))
    student.load_state_dict(teacher.state_dict(), strict=False)  # the w embedding stays zero: w is ignored
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 4, 8, 8, generator=g) * 2 - 1
    cond = Conditioning(class_labels=torch.arange(8) % 3)
    z, lam = torch.randn(8, 3, 4, 8, 8, generator=g), torch.full((8,), 1.0)

    def moves(net, guided):
        outs = []
        for w in (0.0, 3.0):
            wt = torch.full((8,), w)
            den = teacher_denoiser(Denoiser(net, "v"), cond, wt, takes_w=False) if guided else \
                (lambda zz, ll: Denoiser(net, "v")(zz, ll, with_guidance_weight(cond, wt)))
            with torch.no_grad():
                outs.append(den(z, lam).x)
        return outs[1] - outs[0]

    target = moves(teacher, guided=True)
    assert target.abs().mean() > 0.1 and moves(student, guided=False).abs().max() == 0  # untrained: ignores w
    objective = DistillationObjective(SCHEDULE, "guided", w_range=(0.0, 4.0))
    student = fit(objective, {"model": student.requires_grad_(True), "teacher": teacher}, x, cond, steps=100,
                  lr=1e-2)
    moved = moves(student, guided=False)
    cosine = torch.nn.functional.cosine_similarity(moved.flatten(), target.flatten(), dim=0).item()
    ratio = (moved.norm() / target.norm()).item()
    assert cosine > 0.8 and 0.6 < ratio < 1.4, (cosine, ratio)


def toy_teacher(tmp_path):
    run = tmp_path / "teacher"
    overrides = {"model.name": "toy", "model.toy.width": 8, "data.num_frames": 4, "data.size": 8,
                 "train.out_dir": str(run), "train.batch_size": 2, "train.steps": 3, "train.warmup_steps": 1,
                 "train.log_every": 1, "train.ckpt_every": 3, "train.sample_every": 0, "train.progress": False,
                 "train.tensorboard": False, "sample.steps": 4}
    assert main(["train", "demo", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    return run


def distill_args(teacher, out, *extra):
    return ["distill", str(teacher), "train.ckpt_every=2", "train.log_every=1", "--to-steps", "1",
            "--round-steps", "4", "--out", str(out), *extra]


def test_kinema_distill_writes_rounds_and_its_student_samples_only_at_its_steps(tmp_path, capsys):
    teacher = toy_teacher(tmp_path)
    out = tmp_path / "distilled"
    assert main(distill_args(teacher, out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["steps-0001", "steps-0002"]
    meta = json.loads(sorted((out / "steps-0001" / "ckpt").glob("step-*"))[-1].joinpath("meta.json").read_text())
    assert meta["parts"]["teacher"]["trainable"] is False and len(meta["parts"]["teacher"]["sha256"]) == 64
    assert "steps-0002" in meta["parts"]["teacher"]["source"]  # round 2's teacher is round 1's student
    cfg = (out / "steps-0001" / "config.yaml").read_text()
    assert "objective: distill" in cfg and "student_steps: 1" in cfg
    capsys.readouterr()
    video = tmp_path / "s.gif"
    assert main(["sample", str(out / "steps-0001"), "--steps", "4", "--num", "1", "--out", str(video)]) == 2
    err = capsys.readouterr().err
    assert "distilled student for 1 sampling steps" in err and "--steps 1" in err and err.count("\n") == 1
    assert not video.exists()
    assert main(["sample", str(out / "steps-0001"), "--num", "1", "--out", str(video)]) == 0 and video.exists()
    teacher.rename(tmp_path / "gone")  # sampling a student does not need its teacher
    video.unlink()
    assert main(["sample", str(out / "steps-0001"), "--num", "1", "--out", str(video)]) == 0 and video.exists()
    teacher = tmp_path / "gone"
    assert main(["distill", str(teacher), "--to-steps", "3", "--out", str(tmp_path / "bad")]) == 2
    assert "times a power of two" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["distill", str(teacher), "--to-steps", "1", "--guided", "--out", str(tmp_path / "bad")]) == 2
    assert "needs a conditional teacher" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_killed_distill_resumes_at_its_round_and_step(tmp_path, monkeypatch):
    from kinema.train import loop

    teacher = toy_teacher(tmp_path)
    assert main(distill_args(teacher, tmp_path / "whole")) == 0
    step = loop.Trainer.train_step
    calls = {"n": 0}

    def killed(self, batches):  # round 1 (4 steps) completes; round 2 dies in its 4th step
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return step(self, batches)

    monkeypatch.setattr(loop.Trainer, "train_step", killed)
    assert main(distill_args(teacher, tmp_path / "killed")) == 130
    monkeypatch.setattr(loop.Trainer, "train_step", step)
    assert [p.name for p in (tmp_path / "killed" / "steps-0001" / "ckpt").glob("step-*")] == ["step-00000002"]
    assert main(distill_args(teacher, tmp_path / "killed")) == 2  # an existing run needs --resume
    assert main(distill_args(teacher, tmp_path / "killed", "--resume")) == 0
    from safetensors.torch import load_file

    for stage in ("steps-0002", "steps-0001"):
        a = load_file(tmp_path / "whole" / stage / "ckpt" / "step-00000004" / "ema.safetensors")
        b = load_file(tmp_path / "killed" / stage / "ckpt" / "step-00000004" / "ema.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def test_guided_distill_gives_a_student_that_takes_w_as_input_in_one_pass(tmp_path, capsys):
    from kinema.pipelines.sample import make_conditioning, sample_videos
    from kinema.system import load_system

    teacher = tmp_path / "teacher"
    overrides = {"model.name": "toy", "model.toy.width": 8, "model.toy.num_classes": len(BouncingShapes.COLORS),
                 "data.class_key": "color_id", "data.num_frames": 4, "data.size": 8, "train.out_dir": str(teacher),
                 "train.batch_size": 2, "train.steps": 2, "train.sample_every": 0, "train.progress": False,
                 "train.tensorboard": False, "sample.steps": 4}
    assert main(["train", "demo", *[f"{k}={v}" for k, v in overrides.items()]]) == 0
    out = tmp_path / "distilled"
    assert main(["distill", str(teacher), "--to-steps", "2", "--guided", "--w-range", "0,3", "--round-steps", "2",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["guided", "steps-0002"]
    system, _ = load_system(out / "steps-0002")
    assert "guidance_weight" in system.spec.reads and system.cfg.distill.w_range == (0.0, 3.0)
    seen = []
    forward = system.model.forward
    system.model.forward = lambda z, logsnr, cond: seen.append((z.shape[0], cond.guidance_weight)) or forward(
        z, logsnr, cond)
    cond = make_conditioning(system, 3, class_labels=[1])
    videos = sample_videos(system, 3, cond=cond, guidance=2.5, progress=False)
    assert videos.shape == (3, 3, 4, 8, 8) and len(seen) == 2  # 2 steps, one pass of 3 each: no unconditional pass
    assert all(b == 3 and torch.equal(w, torch.full((3,), 2.5)) for b, w in seen)


def test_plan_halves_the_steps_down_to_the_target():
    assert [(s.name, s.stage, s.student_steps) for s in plan(32, 8, guided=True)] == [
        ("guided", "guided", 32), ("steps-0016", "progressive", 16), ("steps-0008", "progressive", 8)]
    assert [s.student_steps for s in plan(256, 8, guided=False)] == [128, 64, 32, 16, 8]
    assert [s.stage for s in plan(8, 8, guided=True)] == ["guided"]
    for bad in [(8, 8, False), (24, 8, False), (4, 8, False), (8, 0, False)]:
        with pytest.raises(ValueError):
            plan(*bad[:2], guided=bad[2])
