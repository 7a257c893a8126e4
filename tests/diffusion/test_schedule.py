import math

import pytest
import torch

from kinema.diffusion.schedule import Schedule, alpha_sigma, logsnr_from_alpha_sigma, resolution_shift, sampling_grid

KINDS = [Schedule("cosine"), Schedule.for_resolution(128), Schedule.for_resolution(32), Schedule("linear", -10.0, 12.0),
         Schedule("interpolated_cosine", shift=0.5, shift_end=resolution_shift(32, 8)),
         Schedule("interpolated_cosine", shift=-1.0, shift_end=4.0)]


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


def test_interpolated_cosine_moves_from_one_shift_to_the_other():
    """simple diffusion's interpolated schedule: cosine + shift at t = 0, cosine + shift_end at t = 1, linear in t."""
    shift, end = 0.3, resolution_shift(32, 16)
    s = Schedule("interpolated_cosine", -12.0, 14.0, shift=shift, shift_end=end)
    assert s.logsnr(0.0).item() == pytest.approx(14.0 + shift)
    assert s.logsnr(1.0).item() == pytest.approx(-12.0 + end)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    plain = Schedule("cosine", -12.0, 14.0).logsnr(t)
    torch.testing.assert_close(s.logsnr(t) - plain, (1 - t) * shift + t * end, rtol=0, atol=1e-12)
    # equal shifts: the shifted cosine
    torch.testing.assert_close(Schedule("interpolated_cosine", shift=0.7, shift_end=0.7).logsnr(t),
                               Schedule("shifted_cosine", shift=0.7).logsnr(t), rtol=0, atol=1e-12)
    # below the shifted end the inverse saturates at t = 1, above the start at t = 0
    assert s.t(torch.tensor([-40.0, 40.0])).tolist() == pytest.approx([1.0, 0.0])


def test_interpolated_cosine_refuses_a_rising_schedule():
    with pytest.raises(ValueError, match="shift_end"):
        Schedule("interpolated_cosine", shift=0.0, shift_end=7.0)
    with pytest.raises(ValueError, match="shift_end"):
        Schedule("cosine", shift_end=-1.0)


def test_interpolated_cosine_from_the_config():
    from kinema.config import load_config
    from kinema.system import build_schedule

    cfg = load_config("demo_text", ["diffusion.schedule=interpolated_cosine", "diffusion.shift_base_resolution=32",
                                    "diffusion.shift_end_base_resolution=16"])
    s = build_schedule(cfg)
    assert (s.kind, s.shift) == ("interpolated_cosine", 0.0)
    assert s.shift_end == pytest.approx(-2 * math.log(2))
