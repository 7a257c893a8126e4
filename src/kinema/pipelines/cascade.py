"""The Imagen Video cascade (Ho et al. 2022, section 2.2 and figure 6): a base model, then temporal
(TSR) and spatial (SSR) super-resolution stages, each an ordinary kinema checkpoint.

:func:`plan_cascade` checks every stage's shapes before anything is sampled: stage N's output
(channels x frames x size^2) must be exactly the low-resolution input stage N + 1 was trained on
(``sr`` factors of its ``data.num_frames`` x ``data.size``); a mismatch is one error naming both
stages. :func:`run_cascade` then samples the base (under its text / class conditioning, with
classifier-free guidance when configured) and feeds each output to the next stage as
``Conditioning.lowres``, augmented at the stage's fixed sampling level
(:func:`~kinema.pipelines.sample.lowres_conditioning`). Every stage has its own sampler, steps,
guidance and augmentation level (:class:`StageSettings`), so a distilled few-step stage slots in.
All stages run under the one denoiser contract; the base is a plain model, so ``kinema extend`` /
``upsample`` and replacement / reconstruction guidance keep working on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from kinema.pipelines.sample import (SamplerSettings, lowres_conditioning, make_conditioning, output_channels,
                                    sample_videos)
from kinema.system import System


@dataclass
class StageSettings:
    """How one stage samples; None keeps the checkpoint's ``sample.*`` / ``sr.sample_aug``."""

    steps: Optional[int] = None
    sampler: Optional[str] = None
    guidance: Optional[float] = None
    aug: Optional[float] = None  # SR stages: fixed augmentation level t_aug in [0, 1]


@dataclass(frozen=True)
class StageShape:
    """What one stage takes and makes: ``(channels, frames, size)``; ``takes`` is None for the base."""

    name: str
    takes: Optional[tuple[int, int, int]]
    makes: tuple[int, int, int]

    @staticmethod
    def of(system: System, name: str) -> "StageShape":
        d, sr = system.cfg.data, system.cfg.sr
        makes = (output_channels(system), d.num_frames, d.size)
        takes = (makes[0], *sr.input_shape(d.num_frames, d.size)) if system.is_sr_stage else None
        return StageShape(name, takes, makes)


def _describe(shape: tuple[int, int, int]) -> str:
    c, f, s = shape
    return f"{f} frames x {s}x{s} x {c} channel{'s' if c != 1 else ''}"


def plan_cascade(systems: Sequence[System], names: Optional[Sequence[str]] = None) -> list[StageShape]:
    """The shapes of each stage, checked stage to stage before any sampling: the first stage generates
    from noise (not an SR stage), every later one is an SR stage whose input is exactly the previous
    stage's output. ``names`` label the stages in errors (default ``stage 1``, ...)."""
    if not systems:
        raise ValueError("a cascade needs at least one stage (the base model)")
    names = list(names) if names is not None else [f"stage {i + 1}" for i in range(len(systems))]
    shapes = [StageShape.of(s, n) for s, n in zip(systems, names)]
    if shapes[0].takes is not None:
        sr = systems[0].cfg.sr
        raise ValueError(f"the first stage of a cascade must be a base model, but {names[0]} is a super-resolution "
                         f"stage (sr.spatial_factor={sr.spatial_factor}, sr.temporal_factor={sr.temporal_factor})")
    for prev, stage in zip(shapes, shapes[1:]):
        if stage.takes is None:
            raise ValueError(f"{stage.name} is not a super-resolution stage (its config has sr.spatial_factor=1 and "
                             f"sr.temporal_factor=1), so it cannot follow {prev.name} in a cascade")
        if stage.takes != prev.makes:
            raise ValueError(f"{prev.name} outputs {_describe(prev.makes)} but {stage.name} expects "
                             f"{_describe(stage.takes)} as its low-resolution input")
    return shapes


def check_prompts(systems: Sequence[System], names: Sequence[str], prompts, class_labels) -> None:
    """A text-conditional base needs no prompt (unconditional sampling is allowed) but a prompt needs
    a text-conditional stage to read it; the same for class labels."""
    if prompts and not any(s.spec.text_dim for s in systems):
        raise ValueError(f"--prompt was given but no stage of the cascade is text-conditional ({', '.join(names)})")
    if class_labels and not any(s.spec.num_classes for s in systems):
        raise ValueError(f"--class was given but no stage of the cascade is class-conditional ({', '.join(names)})")


@torch.inference_mode()
def run_cascade(systems: Sequence[System], num: int, *, settings: Optional[Sequence[StageSettings]] = None,
                prompts: Optional[Sequence[str]] = None, class_labels: Optional[Sequence[int]] = None,
                names: Optional[Sequence[str]] = None, seed: int = 0, batch_size: int = 16,
                progress: bool = True, keep: bool = False) -> list[torch.Tensor]:
    """Sample ``num`` videos through the cascade. Returns float32 ``[num, C, F, H, W]`` in [-1, 1] on
    CPU: the last stage's output, or with ``keep`` every stage's. Shapes and settings are checked
    before the first sample. Stage i draws from seed ``seed + i``; prompts / labels go to every stage
    that reads them."""
    names = list(names) if names is not None else [f"stage {i + 1}" for i in range(len(systems))]
    plan_cascade(systems, names)
    settings = list(settings) if settings is not None else [StageSettings() for _ in systems]
    if len(settings) != len(systems):
        raise ValueError(f"{len(settings)} stage settings for {len(systems)} stages")
    check_prompts(systems, names, prompts, class_labels)
    for system, name, st in zip(systems, names, settings):
        check_stage_settings(system, name, st, labelled=bool(prompts and system.spec.text_dim
                                                              or class_labels and system.spec.num_classes))
    outputs: list[torch.Tensor] = []
    video = None
    for i, (system, name, st) in enumerate(zip(systems, names, settings)):
        cond = make_conditioning(system, num, prompts=prompts if system.spec.text_dim else None,
                                 class_labels=class_labels if system.spec.num_classes else None)
        if video is not None:
            generator = torch.Generator(system.device).manual_seed(seed + 10_000 + i)
            cond = lowres_conditioning(system, video.to(system.device), cond, level=st.aug, generator=generator,
                                       what=f"the output of stage {i}")
        video = sample_videos(system, num, steps=st.steps, sampler=st.sampler, seed=seed + i, cond=cond,
                              guidance=st.guidance,
                              batch_size=batch_size, progress=progress)
        outputs.append(video)
    return outputs if keep else outputs[-1:]


def check_stage_settings(system: System, name: str, st: StageSettings, labelled: bool) -> None:
    """Errors naming the stage, before any sampling: sampler / steps (through the sampler settings),
    an augmentation level for a base model or outside [0, 1], guidance with nothing to guide towards."""
    try:
        SamplerSettings.from_system(system, steps=st.steps, sampler=st.sampler)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    if st.aug is not None and not (system.is_sr_stage and 0.0 <= st.aug <= 1.0):
        raise ValueError(f"{name}: an augmentation level needs an SR stage and a t_aug in [0, 1], got {st.aug}")
    if st.guidance and not labelled:
        raise ValueError(f"{name}: guidance {st.guidance:g} needs a prompt / class that this stage reads")


def parse_stage_list(text: Optional[str], count: int, kind, what: str) -> list:
    """``"64,32,32"`` -> ``[64, 32, 32]`` (``kind`` per item; an empty item keeps the default, None);
    one value applies to every stage. Errors name the option and the stage count."""
    if text is None:
        return [None] * count
    items = [t.strip() for t in str(text).split(",")]
    if len(items) == 1:
        items = items * count
    if len(items) != count:
        raise ValueError(f"{what} has {len(items)} values for {count} stages: {text!r}")
    out = []
    for item in items:
        try:
            out.append(kind(item) if item else None)
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not a valid value ({text!r})") from None
    return out


def stage_names(paths: Sequence[str | Path]) -> list[str]:
    return [f"stage {i + 1} ({p})" for i, p in enumerate(paths)]


__all__ = ["StageSettings", "StageShape", "check_prompts", "check_stage_settings", "output_channels", "parse_stage_list",
           "plan_cascade", "run_cascade", "stage_names"]
