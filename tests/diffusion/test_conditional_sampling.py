"""Conditional sampling from an unconditional model (VDM section 3.1) against closed forms.

Data: every pixel's trajectory over F frames is Gaussian, x ~ N(mu, Sigma) with Sigma_ij = s^2 rho^|i-j|
(strongly correlated frames), pixels independent. Then z_t = alpha x + sigma eps is Gaussian too and
the exact denoiser is E[x | z_t] = mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (z_t - alpha mu), and
the exact answer to "predict the unknown frames b from the known frames a" is the conditional mean
E[x^b | x^a] = mu^b + Sigma_ba Sigma_aa^-1 (x^a - mu^a).
"""

import pytest
import torch

from kinema.resize import resize_video as resize_frames
from kinema.diffusion.guidance import (frame_selection, reconstruction_guidance, replacement,
                                       spatial_downsampling)
from kinema.diffusion.objective import Prediction
from kinema.diffusion.samplers import get_sampler
from kinema.diffusion.schedule import Schedule, alpha_sigma, sampling_grid

F_, RHO, S = 6, 0.95, 0.5
KNOWN = 2  # the first KNOWN frames are given


def gaussian(frames=F_, rho=RHO, s=S):
    i = torch.arange(frames, dtype=torch.float64)
    sigma_ff = s**2 * rho ** (i[:, None] - i[None, :]).abs()  # [F, F]
    mu = torch.linspace(-0.3, 0.3, frames, dtype=torch.float64)  # [F]
    return mu, sigma_ff


def exact_denoiser(mu, cov):
    """E[x | z_t] along the frame axis of z [B, C, F, H, W] (all items at the same log-SNR)."""
    eye = torch.eye(len(mu), dtype=torch.float64)

    def denoise(z, logsnr):
        alpha, sigma = (float(v) for v in alpha_sigma(logsnr[0].double()))
        gain = alpha * torch.linalg.solve(alpha**2 * cov + sigma**2 * eye, cov, left=False)  # cov (.)^-1, [F, F]
        m = mu[None, None, :, None, None]
        x = m + torch.einsum("fg,bcghw->bcfhw", gain, z - alpha * m)
        return Prediction(x, (z - alpha * x) / sigma)

    return denoise


def conditional_mean(mu, cov, x_a, k=KNOWN):
    """E[x^b | x^a] for x_a [B, C, k, H, W] -> [B, C, F - k, H, W]."""
    gain = torch.linalg.solve(cov[:k, :k], cov[:k, k:]).T  # Sigma_ba Sigma_aa^-1, [F-k, k]
    return mu[k:, None, None] + torch.einsum("fg,bcghw->bcfhw", gain, x_a - mu[:k, None, None])


def setup(batch=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu, cov = gaussian()
    chol = torch.linalg.cholesky(cov)
    x_true = mu[:, None, None] + torch.einsum("fg,bcghw->bcfhw", chol, torch.randn(batch, 1, F_, 2, 2, generator=g,
                                                                                      dtype=torch.float64))
    known = torch.zeros(batch, F_, dtype=torch.bool)
    known[:, :KNOWN] = True
    z = torch.randn(batch, 1, F_, 2, 2, generator=g, dtype=torch.float64)
    return mu, cov, x_true, known, z


def error_to_conditional_mean(x, mu, cov, x_true):
    return (x[:, :, KNOWN:] - conditional_mean(mu, cov, x_true[:, :, :KNOWN])).square().mean().item()


def test_reconstruction_guidance_approaches_the_conditional_mean_as_w_r_grows():
    """As in VDM, z^a is drawn from q(z_t | x^a) (replacement) and x_hat^b is corrected by eq. 7;
    w_r = 0 is the plain replacement method."""
    mu, cov, x_true, known, z = setup()
    grid = sampling_grid(Schedule(), 40)
    denoise = exact_denoiser(mu, cov)
    errors = []
    for w_r in (0.0, 1.0, 3.0, 10.0):
        guided = reconstruction_guidance(denoise, x_true * known[:, None, :, None, None], frame_selection(known),
                                         w_r, correct=~known)
        guided = replacement(guided, x_true, known, generator=torch.Generator().manual_seed(0))
        out = get_sampler("ddim")(guided, z, grid)
        errors.append(error_to_conditional_mean(out, mu, cov, x_true))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    # the conditional spread of x^b given x^a is the floor; w_r = 10 gets within a small factor of it
    k = KNOWN
    floor = torch.diagonal(cov[k:, k:] - cov[k:, :k] @ torch.linalg.solve(cov[:k, :k], cov[:k, k:])).mean().item()
    assert errors[-1] < 3 * floor < errors[0], (errors, floor)


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpmpp"])
def test_replacement_keeps_the_known_frames_exactly(name):
    mu, cov, x_true, known, z = setup(batch=64)
    g = torch.Generator().manual_seed(1)
    guided = replacement(exact_denoiser(mu, cov), x_true, known, generator=g)
    out = get_sampler(name)(guided, z, sampling_grid(Schedule(), 20), generator=g)
    assert torch.equal(out[:, :, :KNOWN], x_true[:, :, :KNOWN])
    unconditional = get_sampler(name)(exact_denoiser(mu, cov), z, sampling_grid(Schedule(), 20), generator=g)
    assert error_to_conditional_mean(out, mu, cov, x_true) < error_to_conditional_mean(unconditional, mu, cov, x_true)


def test_super_resolution_by_reconstruction_guidance_matches_the_low_res_video():
    mu, cov, _, _, _ = setup()
    g = torch.Generator().manual_seed(2)
    chol = torch.linalg.cholesky(cov)
    x_true = mu[:, None, None] + torch.einsum("fg,bcghw->bcfhw", chol, torch.randn(32, 1, F_, 8, 8, generator=g,
                                                                                      dtype=torch.float64))
    A = spatial_downsampling((4, 4))
    y = A(x_true)
    assert y.shape == (32, 1, F_, 4, 4)
    z = torch.randn(x_true.shape, generator=g, dtype=torch.float64)
    grid = sampling_grid(Schedule(), 30)
    residual = {}
    for w_r in (0.0, 10.0):
        out = get_sampler("ddim")(reconstruction_guidance(exact_denoiser(mu, cov), y, A, w_r), z, grid)
        residual[w_r] = (A(out) - y).square().mean().item()
    assert residual[10.0] < 0.1 * residual[0.0], residual


def test_operators():
    x = torch.randn(2, 3, 4, 8, 8)
    known = torch.tensor([[True, False, False, True], [False] * 4])
    a = frame_selection(known)(x)
    assert torch.equal(a[0, :, 0], x[0, :, 0]) and a[0, :, 1:3].abs().sum() == 0 and a[1].abs().sum() == 0
    low = resize_frames(x, (4, 4))
    assert low.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(resize_frames(torch.full_like(x, 0.3), (4, 4)), torch.full_like(low, 0.3))
    torch.testing.assert_close(low[1, 2, 3], resize_frames(x[1:, 2:, 3:], (4, 4))[0, 0, 0])  # frame by frame
    with pytest.raises(ValueError, match="bool mask"):
        frame_selection(torch.ones(4))
