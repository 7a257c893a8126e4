"""Progressive and guided distillation (diffusion/distill.py): the analytic target on the closed-form
Gaussian denoiser, the time grid, the weighting, and the objective's wiring."""

import math

import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.diffusion.distill import (DistillConfig, DistillationObjective, ddim_to, one_step_target,
                                      progressive_target, student_levels, teacher_denoiser, truncated_snr_weight)
from kinema.diffusion.objective import (LocalRandom, Prediction, TrainBatch, coefficients, output_from_prediction,
                                        prediction_from_output)
from kinema.diffusion.samplers import sample_ddim
from kinema.diffusion.schedule import Schedule, sampling_grid

from diffusion.test_samplers import gaussian_denoiser

SCHEDULE = Schedule()


@pytest.mark.parametrize("parameterization", ["eps", "x", "v"])
@pytest.mark.parametrize("spacing,steps", [("t", 4), ("logsnr", 2), ("t", 1)])
def test_one_student_step_reproduces_two_teacher_ddim_steps_exactly(parameterization, spacing, steps):
    """Salimans & Ho 2022 Algorithm 2 on the exact Gaussian denoiser: a student whose x_hat is the target
    x_tilde, sampled with N DDIM steps, lands where the teacher's 2N DDIM steps land, for any
    parameterization of the student's output."""
    teacher = gaussian_denoiser()
    teacher_grid = sampling_grid(SCHEDULE, 2 * steps, spacing)
    student_grid = teacher_grid[::2]
    assert torch.equal(student_grid, sampling_grid(SCHEDULE, steps, spacing))  # the student's own sampling grid
    levels = student_grid.tolist()

    def student(z, logsnr):
        i = levels.index(float(logsnr[0]))
        lam = [torch.full((z.shape[0],), float(v), dtype=torch.float64) for v in teacher_grid[2 * i:2 * i + 3]]
        x = progressive_target(teacher, z, *lam)
        alpha, sigma = coefficients(lam[0], z)
        output = output_from_prediction(x, (z - alpha * x) / sigma, alpha, sigma, parameterization)
        return prediction_from_output(output, z, alpha, sigma, parameterization)

    z = torch.randn(64, 1, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    two = sample_ddim(teacher, z, teacher_grid)
    one = sample_ddim(student, z, student_grid)
    assert torch.allclose(one, two, atol=1e-9, rtol=1e-9)
    teacher_alone = sample_ddim(teacher, z, student_grid)  # the teacher with the student's N steps differs
    assert (teacher_alone - two).abs().max() > 1e-4


def test_one_step_target_lands_on_the_given_point():
    g = torch.Generator().manual_seed(1)
    z_t, z_to = torch.randn(2, 2, 4, 4, 4, generator=g, dtype=torch.float64).unbind(0)
    for lam_t, lam_to in [(-3.0, -1.0), (0.5, 4.0), (2.0, math.inf)]:
        lt, lto = torch.full((2,), lam_t, dtype=torch.float64), torch.full((2,), lam_to, dtype=torch.float64)
        x = one_step_target(z_t, lt, z_to, lto)
        alpha, sigma = coefficients(lt, z_t)
        assert torch.allclose(ddim_to(Prediction(x, (z_t - alpha * x) / sigma), lto), z_to, atol=1e-9)
    assert one_step_target(z_t.float(), lt, z_to.float(), lto).dtype == torch.float32


def test_student_levels_are_every_other_teacher_level():
    index = torch.tensor([0, 1, 2, 3])
    lam_t, lam_mid, lam_to = student_levels(SCHEDULE, 4, index)
    teacher = sampling_grid(SCHEDULE, 8)
    assert torch.equal(lam_t, teacher[[0, 2, 4, 6]]) and torch.equal(lam_mid, teacher[[1, 3, 5, 7]])
    assert torch.equal(lam_to, teacher[[2, 4, 6, 8]]) and lam_to[-1] == math.inf
    assert (lam_t < lam_mid).all() and (lam_mid < lam_to).all()


def test_truncated_snr_weight():
    lam = torch.tensor([-5.0, 0.0, math.log(3.0)], dtype=torch.float64)
    assert torch.allclose(truncated_snr_weight(lam), torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))


def test_teacher_denoiser_guides_or_feeds_w():
    calls = []

    def net(z, logsnr, cond):
        calls.append(cond)
        if cond is None:
            return Prediction(z, z)
        scale = 1.0 + (cond.class_labels >= 0).to(z.dtype)[:, None]  # 2 with a label, 1 for the null label
        shift = cond.guidance_weight[:, None] if cond.guidance_weight is not None else 0.0
        return Prediction(z * scale + shift, z)

    z = torch.ones(2, 3)
    cond = Conditioning(class_labels=torch.tensor([1, 2]))
    w = torch.tensor([0.0, 2.0])
    guided = teacher_denoiser(net, cond, w, takes_w=False)(z, torch.zeros(2))
    assert torch.allclose(guided.x, torch.tensor([[2.0] * 3, [2 * 3 - 2 * 1.0] * 3]))  # (1 + w) 2 - w 1
    fed = teacher_denoiser(net, cond, w, takes_w=True)(z, torch.zeros(2))
    assert torch.allclose(fed.x, torch.tensor([[2.0] * 3, [4.0] * 3])) and calls[-1].guidance_weight is w
    plain = teacher_denoiser(net, None, None, takes_w=False)(z, torch.zeros(2))
    assert torch.equal(plain.x, z)


class GaussianNet(torch.nn.Module):
    """A "backbone" with the exact Gaussian denoiser's v output, so objectives can run on it."""

    def forward(self, z, logsnr, cond=None):
        pred = gaussian_denoiser()(z, logsnr.double())
        alpha, sigma = coefficients(logsnr.double(), z)
        return output_from_prediction(pred.x, pred.eps, alpha, sigma, "v").to(z.dtype)


class OracleStudent(torch.nn.Module):
    """Outputs (in v) the exact progressive target of the Gaussian teacher on its N-step grid."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.grid = sampling_grid(SCHEDULE, 2 * steps)

    def forward(self, z, logsnr, cond=None):
        lam = logsnr.double()
        i = (lam[:, None] - self.grid[None, :-1:2]).abs().argmin(1) * 2  # [B] teacher-grid index
        x = progressive_target(gaussian_denoiser(), z, self.grid[i], self.grid[i + 1], self.grid[i + 2])
        alpha, sigma = coefficients(lam, z)
        return output_from_prediction(x, (z - alpha * x) / sigma, alpha, sigma, "v")


def test_progressive_objective_is_zero_for_the_exact_student_only():
    x = 0.7 + 0.4 * torch.randn(8, 1, 2, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    objective = DistillationObjective(SCHEDULE, "progressive", student_steps=4)
    rng = LocalRandom(torch.Generator().manual_seed(3), 8)
    batch = TrainBatch(x, None, {})
    exact, logs = objective({"model": OracleStudent(4), "teacher": GaussianNet()}, batch, rng)
    teacher_as_student, _ = objective({"model": GaussianNet(), "teacher": GaussianNet()}, batch, rng)
    assert exact.item() < 1e-12 and teacher_as_student.item() > 1e-4
    assert set(logs) == {"loss"}


def test_objective_draws_are_reproducible_and_gradients_reach_only_the_student():
    student, teacher = torch.nn.Conv3d(1, 1, 1), torch.nn.Conv3d(1, 1, 1).requires_grad_(False)
    net = lambda m: (lambda z, logsnr, cond: m(z))  # noqa: E731
    x = torch.randn(4, 1, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    objective = DistillationObjective(SCHEDULE, "progressive", student_steps=2, w_range=(0.0, 2.0))
    losses = [objective({"model": net(student), "teacher": net(teacher)}, TrainBatch(x, None, {}),
                        LocalRandom(torch.Generator().manual_seed(5), 4))[0] for _ in range(2)]
    assert torch.equal(losses[0], losses[1])
    losses[0].backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_config_checks():
    with pytest.raises(ValueError, match="distill.w_range"):
        DistillConfig(w_range=(3.0, 1.0))
    with pytest.raises(ValueError, match="distill.student_steps"):
        DistillConfig(student_steps=0)
    with pytest.raises(ValueError, match="distill.guided=true"):
        DistillConfig(stage="guided")
    with pytest.raises(ValueError, match="w_range"):
        DistillationObjective(SCHEDULE, "guided")


def test_distillation_applies_the_teachers_conditioning_hooks():
    """An SR stage's teacher and student both see the low-resolution input its hook derives from x
    (the same tensor), so a cascade stage can be distilled."""
    from kinema.diffusion.distill import DistillationObjective
    from kinema.diffusion.objective import LocalRandom, TrainBatch
    from kinema.diffusion.schedule import Schedule
    from kinema.diffusion.superres import LowResInput, SRConfig

    seen = {}

    def spy(name):
        def net(z, logsnr, cond=None):
            seen.setdefault(name, []).append(None if cond is None else cond.lowres)
            return torch.zeros_like(z)
        return net

    sr = SRConfig(spatial_factor=2, aug_max=0.0)
    objective = DistillationObjective(Schedule("cosine"), "progressive", student_steps=2,
                                      hooks=(LowResInput(sr, Schedule("cosine"), False),))
    x = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    objective({"model": spy("student"), "teacher": spy("teacher")}, TrainBatch(x, None, {}),
              LocalRandom(torch.Generator().manual_seed(0), 2))
    assert seen["student"][0] is not None and seen["student"][0].shape == (2, 3, 4, 4, 4)
    assert all(t is seen["student"][0] for t in seen["teacher"])
