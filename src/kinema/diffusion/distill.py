"""Distillation to few-step sampling: guided distillation, then progressive distillation.

- **Progressive distillation** (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of
  Diffusion Models", Algorithm 2): a student learns to make in ONE deterministic DDIM step the jump
  its teacher makes in TWO. The student's N-step grid is every other level of the teacher's 2N-step
  grid in the same log-SNR schedule (:func:`student_levels`); rounds halve N (256 -> 128 -> ... -> 8),
  each round's student becoming the next round's teacher.
- **Guided distillation** (Meng et al. 2023, "On Distillation of Guided Diffusion Models", stage
  one): a student that takes the guidance weight w as an input (``Conditioning.guidance_weight``)
  learns the classifier-free-guided teacher's prediction (1 + w) x_c - w x_u for w drawn from a range,
  in ONE forward pass instead of two. Stage two is progressive distillation of that student, with w
  drawn per example and given to both the (w-conditioned) teacher and the student.

Both are one objective (:class:`DistillationObjective`, the contract ``objective(parts, batch, rng) ->
(loss, logs)``) whose teacher is the frozen part ``parts["teacher"]``. The loss is taken in x-space
with the truncated-SNR weighting max(SNR, 1) (Salimans & Ho 2022, section 4), whatever the student's
parameterization (its output is converted to x_hat by :func:`prediction_from_output`).

Shapes: ``z, x [B, C, F, H, W]``; ``logsnr [B]`` float64 (``+inf`` = clean data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Optional

import torch
from torch import Tensor

from kinema.conditioning import LABEL_FIELDS, Conditioning, drop_conditioning, with_fields
from kinema.diffusion.guidance import guided_denoiser
from kinema.diffusion.noise import NoisePrior, standard_normal
from kinema.diffusion.objective import (BatchRandom, Denoise, Denoiser, Parameterization, Prediction, TrainBatch,
                                        check_parameterization, coefficients, hook_input, sample_t, segments_for)
from kinema.diffusion.schedule import Schedule, sampling_grid

Stage = Literal["guided", "progressive"]


@dataclass
class DistillConfig:
    """``distill`` section of the config, read when ``train.objective=distill`` (``kinema distill``
    writes it for every round; see the README). The teacher is a frozen part: a checkpoint (or run)
    directory, recorded in the student's checkpoints by path and sha256."""

    teacher: Optional[str] = None  # teacher checkpoint or run directory
    stage: Literal["guided", "progressive"] = "progressive"  # guided: Meng et al. stage one; progressive: one round
    guided: bool = False  # the student takes w as input (cond.guidance_weight), w ~ U(w_range) per example
    w_range: tuple[float, float] = (0.0, 4.0)  # guidance weights to distill over (guided students)
    student_steps: int = 8  # progressive: the student's DDIM steps this round (the teacher takes twice as many)

    def __post_init__(self) -> None:
        self.w_range = tuple(float(w) for w in self.w_range)
        lo, hi = self.w_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 <= lo <= hi):
            raise ValueError(f"distill.w_range must be two finite weights 0 <= low <= high, got {list(self.w_range)}")
        if self.student_steps < 1:
            raise ValueError(f"distill.student_steps must be >= 1, got {self.student_steps}")
        if self.stage == "guided" and not self.guided:
            raise ValueError("distill.stage=guided distills the guidance weight into the student: it needs "
                             "distill.guided=true")


# ---- the math ---------------------------------------------------------------------------------------


def ddim_to(pred: Prediction, logsnr_to: Tensor) -> Tensor:
    """Deterministic DDIM step (Song et al. 2021 eq. 12 with eta = 0) to per-example levels
    ``logsnr_to [B]``: z_to = alpha_to x_hat + sigma_to eps_hat. Since eps_hat = (z_s - alpha_s x_hat) /
    sigma_s this is Salimans & Ho 2022 Algorithm 2's z_t' = alpha_t' x_hat + (sigma_t'/sigma_t)(z_t -
    alpha_t x_hat). ``+inf`` lands on x_hat. ``pred`` holds ``[B, ...]``; returns ``[B, ...]``."""
    alpha, sigma = coefficients(logsnr_to, pred.x)
    return alpha * pred.x + sigma * pred.eps


def one_step_target(z_t: Tensor, logsnr_t: Tensor, z_to: Tensor, logsnr_to: Tensor) -> Tensor:
    """The x_tilde that makes ONE DDIM step from (z_t, lambda_t) land on z_to at lambda_to (Salimans &
    Ho 2022, Algorithm 2): with z_to = alpha_to x + (sigma_to / sigma_t)(z_t - alpha_t x) solved for x,

        x_tilde = (z_to - (sigma_to / sigma_t) z_t) / (alpha_to - (sigma_to / sigma_t) alpha_t).

    The denominator is alpha_to (1 - exp((lambda_t - lambda_to) / 2)) > 0 for lambda_to > lambda_t.
    Computed in float64 (the two differences cancel at low SNR); returned in ``z_t``'s dtype.
    ``z_t, z_to [B, ...]``, ``logsnr_t, logsnr_to [B]``."""
    z_t64, z_to64 = z_t.double(), z_to.double()
    alpha_t, sigma_t = coefficients(logsnr_t.double(), z_t64)
    alpha_to, sigma_to = coefficients(logsnr_to.double(), z_t64)
    ratio = sigma_to / sigma_t
    return ((z_to64 - ratio * z_t64) / (alpha_to - ratio * alpha_t)).to(z_t.dtype)


def progressive_target(teacher: Denoise, z_t: Tensor, logsnr_t: Tensor, logsnr_mid: Tensor,
                       logsnr_to: Tensor) -> Tensor:
    """Progressive distillation's target (Salimans & Ho 2022, Algorithm 2): two deterministic DDIM
    steps of the teacher, lambda_t -> lambda_mid -> lambda_to, then the x_tilde of
    :func:`one_step_target` with which the student's single step t -> to lands on the same z.
    ``teacher(z, logsnr [B]) -> Prediction`` (conditioning and guidance bound in). ``[B, ...]``."""
    z_mid = ddim_to(teacher(z_t, logsnr_t), logsnr_mid)
    z_to = ddim_to(teacher(z_mid, logsnr_mid), logsnr_to)
    return one_step_target(z_t, logsnr_t, z_to, logsnr_to)


def student_levels(schedule: Schedule, student_steps: int, index: Tensor,
                   spacing: Literal["t", "logsnr"] = "t") -> tuple[Tensor, Tensor, Tensor]:
    """(lambda_t, lambda_mid, lambda_to), each ``[B]`` float64, of the student's step ``index [B]``
    (0 = noisiest) on its ``student_steps``-step grid. The teacher's grid is
    :func:`~kinema.diffusion.schedule.sampling_grid` with ``2 * student_steps`` steps and the student's
    is every other entry of it (Salimans & Ho 2022: t = i/N, t - 0.5/N, t - 1/N), so the student walks
    exactly the grid that ``kinema sample --steps student_steps`` uses; the last step lands on +inf."""
    grid = sampling_grid(schedule, 2 * student_steps, spacing).to(index.device)  # [2N + 1]
    i = 2 * index.long()
    return grid[i], grid[i + 1], grid[i + 2]


def truncated_snr_weight(logsnr: Tensor) -> Tensor:
    """Truncated-SNR weighting of the x-space loss, max(SNR, 1) = max(exp(lambda), 1) (Salimans & Ho
    2022, section 4, eq. 10: the x-space loss weighted by SNR would vanish at SNR -> 0, the first
    steps that matter most for few-step sampling). ``[B]`` -> ``[B]`` float64."""
    return torch.exp(logsnr.double()).clamp_min(1.0)


def distillation_loss(x_student: Tensor, x_target: Tensor, logsnr: Tensor) -> Tensor:
    """Per-example max(SNR, 1) ||x_tilde - x_hat_student||^2 (mean over elements), Salimans & Ho 2022
    Algorithm 2 / Meng et al. 2023 eq. 6. ``x_* [B, ...]``, ``logsnr [B]`` -> ``[B]`` float32."""
    sq = (x_student.float() - x_target.float()).pow(2).flatten(1).mean(1)
    return sq * truncated_snr_weight(logsnr).to(sq)


def with_guidance_weight(cond: Optional[Conditioning], w: Tensor) -> Conditioning:
    """``cond`` (or an empty Conditioning) with ``guidance_weight = w [B]``: the input of a guided student."""
    return with_fields(cond, guidance_weight=w)


def teacher_denoiser(teacher: Callable[..., Prediction], cond: Optional[Conditioning], w: Optional[Tensor],
                     takes_w: bool) -> Denoise:
    """The teacher's ``denoise(z, logsnr)`` for distillation with per-example weights ``w [B]`` (None:
    no guidance). A w-conditioned teacher (a guided student) gets w as its input, one pass; any other
    teacher with labels in ``cond`` runs classifier-free guidance (Ho & Salimans 2021 eq. 6) with the
    labels dropped for the unconditional pass; without labels or w, the plain teacher."""
    if w is not None and takes_w:
        cond_w = with_guidance_weight(cond, w)
        return lambda z, logsnr: teacher(z, logsnr, cond_w)
    labelled = cond is not None and (cond.text_emb is not None or cond.class_labels is not None)
    if w is not None and labelled:
        return guided_denoiser(teacher, cond, drop_conditioning(cond, fields=LABEL_FIELDS), w)
    return lambda z, logsnr: teacher(z, logsnr, cond)


# ---- the objective ----------------------------------------------------------------------------------


@dataclass
class DistillationObjective:
    """Distillation against the frozen part ``parts["teacher"]``, as ``objective(parts, batch, rng) ->
    (loss, logs)``; ``parts["model"]`` is the student.

    ``stage="guided"``: t ~ U(0, 1) (``t_sampling``), the target is the guided teacher's x_hat at z_t.
    ``stage="progressive"``: a student step on the ``student_steps`` grid (``spacing`` as the sampler's)
    drawn uniformly, the target is :func:`progressive_target`. With ``w_range`` each example draws
    w ~ U(w_range), fed to the student as ``cond.guidance_weight`` (and to the teacher as input when
    ``teacher_takes_w``, else by classifier-free guidance). ``hooks`` (``hook(x, cond, rng) -> (cond, _)``)
    complete the conditioning as in the teacher's training, e.g. the low-resolution input of a
    super-resolution stage; teacher and student get the same. Draws, in order: the hooks', w, the step /
    t, the noise, all through ``rng``. The teacher runs without gradients.
    """

    schedule: Schedule
    stage: Stage
    parameterization: Parameterization = "v"  # the student's
    teacher_parameterization: Parameterization = "v"
    student_steps: int = 8
    spacing: Literal["t", "logsnr"] = "t"
    w_range: Optional[tuple[float, float]] = None
    teacher_takes_w: bool = False
    t_sampling: str = "stratified"
    hooks: tuple = ()  # conditioning hooks the teacher trained with (e.g. an SR stage's low-res input)
    noise: NoisePrior = standard_normal  # the teacher's noise prior (diffusion/noise.py)
    sigma_data: float = 1.0  # the student's v preconditioning (diffusion/objective.py, preconditioning)
    teacher_sigma_data: float = 1.0

    def __post_init__(self) -> None:
        check_parameterization(self.parameterization, self.sigma_data)
        check_parameterization(self.teacher_parameterization, self.teacher_sigma_data)
        if self.stage not in ("guided", "progressive"):
            raise ValueError(f"unknown distillation stage {self.stage!r}; choose guided or progressive")
        if self.stage == "guided" and self.w_range is None:
            raise ValueError("guided distillation needs a w_range to draw guidance weights from")
        if self.student_steps < 1:
            raise ValueError(f"student_steps must be >= 1, got {self.student_steps}")

    def levels(self, n: int, rng: BatchRandom, device) -> tuple[Tensor, ...]:
        """(lambda_t,) for the guided stage, (lambda_t, lambda_mid, lambda_to) for a progressive round; ``[n]``."""
        if self.stage == "guided":
            t = rng.draw(lambda m: sample_t(m, self.t_sampling, generator=rng.generator, device=device))
            return (self.schedule.logsnr(t),)
        index = rng.draw(lambda m: torch.randint(self.student_steps, (m,), generator=rng.generator, device=device))
        return student_levels(self.schedule, self.student_steps, index, self.spacing)

    def __call__(self, parts: Mapping[str, Callable], batch: TrainBatch, rng: BatchRandom) -> tuple[Tensor, dict]:
        x, cond = batch.x, batch.cond
        for hook in self.hooks:
            cond, _ = hook(hook_input(hook, batch), cond, rng)
        w = None
        if self.w_range is not None:
            lo, hi = self.w_range
            w = rng.draw(lambda m: lo + (hi - lo) * torch.rand(m, generator=rng.generator, device=x.device,
                                                             dtype=torch.float64)).to(x.dtype)
        levels = self.levels(x.shape[0], rng, x.device)
        segments = getattr(cond, "frame_segments", None)
        noise = rng.draw(lambda m: self.noise((m, *x.shape[1:]), rng.generator, x.device, x.dtype,
                                              segments_for(segments, m)))
        alpha, sigma = coefficients(levels[0], x)
        z = alpha * x + sigma * noise  # [B, C, F, H, W]
        teacher_net = Denoiser(parts["teacher"], self.teacher_parameterization, self.teacher_sigma_data)
        teacher = teacher_denoiser(teacher_net, cond, w, self.teacher_takes_w)
        with torch.no_grad():
            target = teacher(z, levels[0]).x if self.stage == "guided" else progressive_target(teacher, z, *levels)
        student_cond = with_guidance_weight(cond, w) if w is not None else cond
        x_hat = Denoiser(parts["model"], self.parameterization, self.sigma_data)(z, levels[0], student_cond).x
        loss = distillation_loss(x_hat, target, levels[0]).mean()
        return loss, {"loss": loss.detach()}


__all__ = ["DistillConfig", "DistillationObjective", "ddim_to", "distillation_loss", "one_step_target",
           "progressive_target", "student_levels", "teacher_denoiser", "truncated_snr_weight",
           "with_guidance_weight"]
