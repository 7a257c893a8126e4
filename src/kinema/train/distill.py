"""``kinema distill``: guided distillation, then rounds of progressive distillation, each round an
ordinary run directory trained by the ordinary :class:`~kinema.train.loop.Trainer` with
``train.objective=distill`` (:class:`~kinema.diffusion.distill.DistillationObjective`).

Layout of ``OUT``::

    OUT/guided/            (--guided) Meng et al. 2023 stage one: the student takes w as an input
    OUT/steps-0128/        round 1: 128 DDIM steps learned from the teacher's 256
    OUT/steps-0064/        round 2: its teacher is round 1's final checkpoint
    ...
    OUT/steps-0008/        the final student: `kinema sample OUT/steps-0008 --steps 8 --guidance w`

Every stage starts from its teacher's weights (``kinema.system.init_from_teacher``). A killed run
resumes with ``--resume``: finished stages are kept (their trainer finds them at their last step),
the interrupted one continues from its newest checkpoint, the rest start afresh.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from kinema import checkpoint as ckpt_io
from kinema.config import KinemaConfig, apply_overrides, from_dict, to_dict
from kinema.system import config_section, distilled_steps, load_system, takes_guidance_weight


@dataclass(frozen=True)
class Stage:
    """One run of the plan: ``name`` (its directory under OUT), ``stage`` (guided / progressive) and
    ``student_steps`` (progressive: the student's steps; guided: the steps it samples with)."""

    name: str
    stage: str
    student_steps: int


def plan(from_steps: int, to_steps: int, guided: bool) -> list[Stage]:
    """The stages from a teacher sampled with ``from_steps`` DDIM steps to a ``to_steps`` student:
    optionally the guided stage, then one progressive round per halving (Salimans & Ho 2022)."""
    if to_steps < 1 or from_steps < to_steps:
        raise ValueError(f"--to-steps {to_steps} must be >= 1 and at most the teacher's steps ({from_steps})")
    rounds = (from_steps // to_steps).bit_length() - 1
    if to_steps << rounds != from_steps:
        raise ValueError(f"the teacher's {from_steps} steps must be --to-steps ({to_steps}) times a power of two: "
                         f"each round halves the steps; set --from-steps to e.g. {to_steps << max(rounds, 1)}")
    if rounds == 0 and not guided:
        raise ValueError(f"the teacher already samples with {from_steps} steps: nothing to distill "
                         f"(lower --to-steps, or add --guided)")
    stages = [Stage("guided", "guided", from_steps)] if guided else []
    halvings = [from_steps >> r for r in range(1, rounds + 1)]
    return stages + [Stage(f"steps-{n:04d}", "progressive", n) for n in halvings]


def _add_guidance_input(data: dict, cfg: KinemaConfig) -> None:
    """Give the backbone in config dict ``data`` the guidance weight as a scalar condition (the U-Net's
    ``scalar_conditions``); a backbone without that option cannot be a guided student."""
    section = config_section(cfg)
    backbone = data["model"][section]
    if not hasattr(cfg.model.backbone, "scalar_conditions"):
        raise ValueError(f"--guided needs a backbone that takes the guidance weight as an input; model.name="
                         f"{cfg.model.name} has no model.{section}.scalar_conditions")
    names = list(backbone.get("scalar_conditions") or [])
    backbone["scalar_conditions"] = names + ["guidance_weight"] if "guidance_weight" not in names else names


def round_config(teacher_cfg: KinemaConfig, teacher: str, out_dir: Path, stage: Stage, *, guided: bool,
                 w_range: tuple[float, float], steps: int, overrides: Sequence[str] = ()) -> KinemaConfig:
    """The config of one stage: the teacher's config (model, schedule, data, sampler spacing) with
    ``train.objective=distill``, the ``distill`` section, ``steps`` training steps into ``out_dir``,
    sampling (and previews) at the student's steps, then the user's ``overrides``. A guided stage
    adds the guidance-weight input to the backbone (a later round's teacher already has it)."""
    data = copy.deepcopy(to_dict(teacher_cfg))
    if stage.stage == "guided":
        _add_guidance_input(data, teacher_cfg)
    data["train"].update(objective="distill", out_dir=str(out_dir), steps=steps, warmup_steps=0,
                         ckpt_every=min(teacher_cfg.train.ckpt_every, steps), sample_steps=stage.student_steps,
                         minutes=None)
    data["sample"]["steps"] = stage.student_steps
    data["distill"] = {"teacher": teacher, "stage": stage.stage, "guided": guided, "w_range": list(w_range),
                       "student_steps": stage.student_steps}
    return from_dict(KinemaConfig, apply_overrides(KinemaConfig, data, list(overrides)))


def check_teacher(teacher_cfg: KinemaConfig, reads: tuple[str, ...], source: Path, guided: bool) -> None:
    """Errors before anything is trained: a guided distillation needs labels to guide over, and a
    progressive student must be sampled with its own steps, not re-distilled from a different grid."""
    if guided and takes_guidance_weight(teacher_cfg):
        raise ValueError(f"teacher {source} already takes the guidance weight as an input; drop --guided")
    if guided and not ({"text", "class_labels"} & set(reads)):
        raise ValueError(f"--guided needs a conditional teacher (text or class labels to guide towards); {source} "
                         f"is unconditional")


def distill(teacher: str | Path, out: str | Path, *, to_steps: int, from_steps: Optional[int] = None,
            guided: bool = False, w_range: tuple[float, float] = (0.0, 4.0), round_steps: int = 1000,
            guided_steps: Optional[int] = None, overrides: Sequence[str] = (), resume: bool = False,
            overwrite: bool = False, report: Callable[[str], None] = print) -> list[Path]:
    """Run the plan (:func:`plan`) from checkpoint or run ``teacher`` into ``out``; returns the run
    directories, the final student last. ``round_steps`` / ``guided_steps`` are training steps per
    progressive round / for the guided stage; ``overrides`` (``key.sub=value``) apply to every stage."""
    from kinema.train.loop import Trainer

    system, ckpt = load_system(teacher, device="cpu")
    teacher_cfg, reads = system.cfg, system.spec.reads
    del system
    start = distilled_steps(teacher_cfg) or teacher_cfg.sample.steps
    stages = plan(from_steps or start, to_steps, guided)
    check_teacher(teacher_cfg, reads, ckpt, guided)
    guided = guided or takes_guidance_weight(teacher_cfg)
    out = Path(out).expanduser()
    runs, source = [], str(ckpt.resolve())
    for stage in stages:
        run_dir = out / stage.name
        steps = (guided_steps or round_steps) if stage.stage == "guided" else round_steps
        cfg = round_config(teacher_cfg, source, run_dir, stage, guided=guided, w_range=w_range, steps=steps,
                           overrides=overrides)
        report(f"kinema distill: {stage.name}: {_describe(stage, cfg)} from {source}")
        summary = Trainer(cfg, resume=resume, overwrite=overwrite).fit()
        if summary["final_step"] < cfg.train.steps:
            raise ValueError(f"{run_dir} stopped at step {summary['final_step']} of {cfg.train.steps}; continue "
                               f"with --resume")
        runs.append(run_dir)
        source = str(ckpt_io.resolve_checkpoint(run_dir).resolve())
        teacher_cfg = ckpt_io.load_checkpoint_config(source)
    return runs


def _describe(stage: Stage, cfg: KinemaConfig) -> str:
    lo, hi = cfg.distill.w_range
    w = f", w ~ U[{lo:g}, {hi:g}]" if cfg.distill.guided else ""
    if stage.stage == "guided":
        return f"guided distillation (the student takes w as input{w}), {cfg.train.steps} training steps"
    return f"{2 * stage.student_steps} -> {stage.student_steps} DDIM steps{w}, {cfg.train.steps} training steps"


__all__ = ["Stage", "check_teacher", "distill", "plan", "round_config"]
