import math

import pytest
import torch

from kinema.diffusion.schedule import Schedule, alpha_sigma, logsnr_from_alpha_sigma, resolution_shift, sampling_grid

KINDS = [Schedule("cosine"), Schedule.for_resolution(128), Schedule.for_resolution(32), Schedule("linear", -10.0, 12.0)]


@pytest.mark.parametrize("schedule", KINDS, ids=lambda s: f"{s.kind}{s.shift:+.2f}")
def test_alpha_sigma_variance_preserving_and_monotone(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    lam = schedule.logsnr(t)
    assert lam.dtype == torch.float64
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease strictly in t"
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha), rtol=0, atol=1e-14)
    torch.testing.assert_close(logsnr_from_alpha_sigma(alpha, sigma), lam, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("schedule", KINDS, ids=lambda s: f"{s.kind}{s.shift:+.2f}")
def test_t_logsnr_round_trip(schedule):
    t = torch.rand(500, dtype=torch.float64)
    torch.testing.assert_close(schedule.t(schedule.logsnr(t)), t, rtol=0, atol=1e-10)
    lam = torch.linspace(schedule.logsnr(0.99).item(), schedule.logsnr(0.01).item(), 200, dtype=torch.float64)
    torch.testing.assert_close(schedule.logsnr(schedule.t(lam)), lam, rtol=0, atol=1e-9)


def test_cosine_endpoints_are_the_clipping_range():
    s = Schedule("cosine", logsnr_min=-12.0, logsnr_max=9.0)
    assert s.logsnr(0.0).item() == pytest.approx(9.0, abs=1e-9)
    assert s.logsnr(1.0).item() == pytest.approx(-12.0, abs=1e-9)
    # unclipped cosine: alpha = cos(pi t / 2) in the interior (lambda = -2 log tan(pi t / 2))
    wide = Schedule("cosine", logsnr_min=-60.0, logsnr_max=60.0)
    alpha, _ = wide.alpha_sigma(torch.tensor(0.3, dtype=torch.float64))
    assert alpha.item() == pytest.approx(math.cos(math.pi * 0.3 / 2), abs=1e-9)


def test_shifted_cosine_shift_is_two_log_ratio():
    base = Schedule("cosine")
    shifted = Schedule.for_resolution(256, base_resolution=64)
    assert shifted.shift == pytest.approx(2 * math.log(64 / 256))
    t = torch.rand(10, dtype=torch.float64)
    torch.testing.assert_close(shifted.logsnr(t) - base.logsnr(t), torch.full_like(t, resolution_shift(256, 64)))


def test_alpha_sigma_limits():
    a, s = alpha_sigma(torch.tensor([math.inf, -math.inf], dtype=torch.float64))
    assert a.tolist() == [1.0, 0.0] and s.tolist() == [0.0, 1.0]


def test_invalid_schedules_name_the_value():
    with pytest.raises(ValueError, match="cosyne"):
        Schedule("cosyne")
    with pytest.raises(ValueError, match="logsnr_min"):
        Schedule("cosine", logsnr_min=5.0, logsnr_max=1.0)


@pytest.mark.parametrize("spacing", ["t", "logsnr"])
def test_sampling_grid(spacing):
    grid = sampling_grid(Schedule(), 8, spacing)
    assert grid.shape == (9,) and grid[-1] == math.inf
    assert torch.all(grid[1:] > grid[:-1])
    assert grid[0].item() == pytest.approx(-15.0)
    if spacing == "logsnr":
        diffs = grid[1:-1] - grid[:-2]
        torch.testing.assert_close(diffs, torch.full_like(diffs, diffs[0].item()))
    with pytest.raises(ValueError, match="steps"):
        sampling_grid(Schedule(), 0)
