"""Samplers checked against closed forms and against diffusers' schedulers."""

import math

import pytest
import torch

from kinema.diffusion.objective import Prediction, coefficients, output_from_prediction
from kinema.diffusion.samplers import SAMPLERS, dynamic_threshold, get_sampler, sample_ddim
from kinema.diffusion.schedule import Schedule, sampling_grid

MU, S = 0.7, 0.4


def gaussian_denoiser(mu=MU, s=S):
    """Exact E[x | z] for x ~ N(mu, s^2 I): x_hat = mu + alpha s^2 (z - alpha mu) / (alpha^2 s^2 + sigma^2)."""

    def denoise(z, logsnr):
        alpha, sigma = coefficients(logsnr.to(torch.float64), z)
        x_hat = mu + alpha * s**2 * (z - alpha * mu) / (alpha**2 * s**2 + sigma**2)
        return Prediction(x_hat, (z - alpha * x_hat) / sigma)

    return denoise


@pytest.mark.parametrize("name,steps,spacing", [("ddim", 50, "t"), ("ddpm", 200, "t"), ("dpmpp", 40, "logsnr"),
                                                ("dpmpp", 25, "t")])
def test_samplers_recover_the_gaussian(name, steps, spacing):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 1, dtype=torch.float64, generator=g)
    out = get_sampler(name)(gaussian_denoiser(), z, sampling_grid(Schedule(), steps, spacing), generator=g)
    # tolerance: Monte-Carlo error of the mean (s / sqrt(n) ~ 0.003) plus discretization
    assert out.mean().item() == pytest.approx(MU, abs=0.015)
    assert out.std().item() == pytest.approx(S, abs=0.015)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    grid = sampling_grid(Schedule(), 10)
    z = torch.randn(64, 3)
    a = sample_ddim(gaussian_denoiser(), z, grid)
    b = sample_ddim(gaussian_denoiser(), z, grid, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    c = sample_ddim(gaussian_denoiser(), z, grid, eta=1.0, generator=torch.Generator().manual_seed(5))
    d = sample_ddim(gaussian_denoiser(), z, grid, eta=1.0, generator=torch.Generator().manual_seed(5))
    e = sample_ddim(gaussian_denoiser(), z, grid, eta=1.0, generator=torch.Generator().manual_seed(6))
    assert torch.equal(c, d) and not torch.allclose(c, e)


def test_ddim_deterministic_map_is_the_exact_ode_for_gaussians():
    """For Gaussian data the probability-flow ODE maps noise z to mu + s z; fine DDIM approaches it."""
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    out = sample_ddim(gaussian_denoiser(), z, sampling_grid(Schedule(logsnr_min=-20), 400))
    torch.testing.assert_close(out, MU + S * z, rtol=0, atol=5e-3)


def test_dpmpp_is_higher_order_than_ddim():
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    grid = sampling_grid(Schedule(), 20)
    err = {n: (get_sampler(n)(gaussian_denoiser(), z, grid) - (MU + S * z)).abs().max().item() for n in ("ddim", "dpmpp")}
    assert err["dpmpp"] < err["ddim"] / 5, err


def test_callback_and_grid_validation():
    calls = []
    grid = sampling_grid(Schedule(), 4)
    for name, sampler in SAMPLERS.items():
        calls.clear()
        sampler(gaussian_denoiser(), torch.randn(2, 2), grid, callback=lambda i, n, z, x: calls.append((i, n)),
                generator=torch.Generator().manual_seed(0))
        assert calls == [(0, 4), (1, 4), (2, 4), (3, 4)], name
    with pytest.raises(ValueError, match="increase"):
        sample_ddim(gaussian_denoiser(), torch.randn(2, 2), grid.flip(0))
    with pytest.raises(ValueError, match="euler"):
        get_sampler("euler")


def test_thresholding():
    x = torch.tensor([[0.5, -3.0, 2.0, 0.1]])
    assert dynamic_threshold(x, 1.0).abs().max().item() == pytest.approx(1.0)
    y = torch.tensor([[0.5, -0.2]])
    torch.testing.assert_close(dynamic_threshold(y, 0.99), y)  # s is at least 1: untouched
    grid = sampling_grid(Schedule(), 5)
    far = gaussian_denoiser(mu=5.0, s=0.1)
    out = sample_ddim(far, torch.randn(8, 4), grid, thresholding="static")
    assert out.abs().max().item() <= 1.0 + 1e-6


# ---- cross-check against diffusers ------------------------------------------------------------------

try:  # only these cross-checks need diffusers; the closed-form tests above run without it
    import diffusers
except ImportError:
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="diffusers is not installed")


def _trained_betas(n=1000):
    """Discrete betas whose alpha-bar follows kinema's cosine schedule at t = (i + 1) / n."""
    t = torch.arange(1, n + 1, dtype=torch.float64) / n
    alpha_bar = torch.sigmoid(Schedule().logsnr(t))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return (1 - alpha_bar / prev).tolist()


def _logsnr_of(scheduler, timestep):
    if timestep < 0:
        return math.inf
    ab = scheduler.alphas_cumprod[int(timestep)].double()
    return torch.log(ab / (1 - ab)).item()


def _model_output(z, logsnr, param):
    pred = gaussian_denoiser()(z, torch.full((z.shape[0],), logsnr, dtype=torch.float64))
    alpha, sigma = coefficients(torch.full((z.shape[0],), logsnr, dtype=torch.float64), z)
    return output_from_prediction(pred.x, pred.eps, alpha, sigma, param)


@needs_diffusers
@pytest.mark.parametrize("param,dtype", [("eps", "epsilon"), ("v", "v_prediction")])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_step_matches_diffusers(param, dtype, eta):
    from kinema.diffusion.objective import Denoiser

    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, trained_betas=_trained_betas(), prediction_type=dtype,
                                    clip_sample=False, set_alpha_to_one=True, steps_offset=0)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 2, 4, 4, dtype=torch.float64, generator=g)
    noise = torch.randn(z.shape, dtype=torch.float64, generator=g)
    denoiser = Denoiser(lambda z_, l_, c_: _model_output(z_, l_[0].item(), param), param)
    for t in sched.timesteps[:4].tolist() + [sched.timesteps[-1].item()]:
        prev = t - 1000 // 10
        lam_s, lam_t = _logsnr_of(sched, t), _logsnr_of(sched, prev)
        out = _model_output(z, lam_s, param)
        theirs = sched.step(out, t, z, eta=eta, variance_noise=noise).prev_sample
        from kinema.diffusion.samplers import ddim_step

        pred = denoiser(z, torch.full((4,), lam_s, dtype=torch.float64))
        ours = ddim_step(pred, lam_s, lam_t, eta=eta, noise=noise)
        torch.testing.assert_close(ours, theirs.to(torch.float64), rtol=1e-5, atol=1e-5)


@needs_diffusers
@pytest.mark.parametrize("param,dtype", [("eps", "epsilon"), ("v", "v_prediction")])
def test_dpmpp_2m_matches_diffusers(param, dtype):
    from kinema.diffusion.objective import Denoiser
    from kinema.diffusion.samplers import sample_dpmpp_2m

    sched = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=_trained_betas(), prediction_type=dtype,
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="zero", thresholding=False)
    sched.set_timesteps(10)
    z0 = torch.randn(4, 3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    theirs = [z0]
    z = z0
    for t in sched.timesteps:
        z = sched.step(_model_output(z, _logsnr_of(sched, t), param), t, z).prev_sample.to(torch.float64)
        theirs.append(z)

    grid = [_logsnr_of(sched, t) for t in sched.timesteps] + [math.inf]
    ours = [z0]
    denoiser = Denoiser(lambda z_, l_, c_: _model_output(z_, l_[0].item(), param), param)
    sample_dpmpp_2m(lambda z_, l_: denoiser(z_, l_.to(torch.float64)), z0, torch.tensor(grid, dtype=torch.float64),
                    callback=lambda i, n, z_, x_: ours.append(z_))
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")
