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


def test_reconstruction_guidance_correction_is_eq7_with_alpha_not_alpha_squared():
    """VDM eq. 7 with a linear denoiser that mixes frames, x_hat(z) = L z with L = c I + d (mean over
    frames), so the gradient is known in closed form: grad_z ||y - A L z||^2 = 2 L^T A^T (A L z - y)
    = 2 L A (L z - y) (L and the frame mask A are symmetric), and the unknown frames are corrected
    through the frame mixing. Checked at log-SNR 0 (alpha = 0.707, alpha^2 = 0.5), so a correction
    scaled by alpha^2 (or sigma, or without the 1/2) fails; the closed-form gradient is also checked
    against central finite differences of the squared error."""
    gen = torch.Generator().manual_seed(0)
    b, ch, f, h, w = 2, 3, 4, 4, 4
    c, d, w_r = 0.8, 0.5, 3.0
    z = torch.randn(b, ch, f, h, w, generator=gen, dtype=torch.float64)
    y = torch.randn(b, ch, f, h, w, generator=gen, dtype=torch.float64)
    known = torch.zeros(b, f, dtype=torch.bool)
    known[:, :2] = True
    A = frame_selection(known)
    L = lambda zz: c * zz + d * zz.mean(dim=2, keepdim=True)

    def denoise(z_in, logsnr):
        x = L(z_in)
        return Prediction(x, torch.zeros_like(x))

    logsnr = torch.zeros(b, dtype=torch.float64)
    alpha = 0.5 ** 0.5
    guided = reconstruction_guidance(denoise, y, A, w_r, correct=~known)(z, logsnr)
    grad = 2 * L(A(L(z) - y))
    unknown = (~known)[:, None, :, None, None].to(z.dtype)
    assert grad[:, :, 2:].abs().min() > 0  # the unknown frames do get a correction
    torch.testing.assert_close(guided.x, L(z) - (w_r * alpha / 2) * grad * unknown)
    err = lambda zz: (A(y) - A(L(zz))).square().sum()
    for idx in [(0, 0, 0, 1, 2), (1, 2, 3, 3, 0), (0, 1, 2, 0, 0)]:
        dz = torch.zeros_like(z)
        dz[idx] = 1e-6
        fd = (err(z + dz) - err(z - dz)) / 2e-6
        torch.testing.assert_close(fd, grad[idx], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(guided.x[:, :, :2], L(z)[:, :, :2])  # eq. 7 corrects x^b only


def test_replacement_renoises_the_known_frames_at_every_call():
    """The replacement method draws z_s^a = alpha_s x^a + sigma_s eps afresh before *every* model call:
    over many calls at one log-SNR, the known frames the model sees have mean alpha x^a and standard
    deviation sigma (and differ from call to call); the unknown frames pass through unchanged."""
    gen = torch.Generator().manual_seed(1)
    x_a = torch.rand(1, 3, 4, 4, 4, generator=gen) * 2 - 1
    known = torch.tensor([[True, True, False, False]])
    seen = []

    def spy(z_in, logsnr):
        seen.append(z_in.clone())
        return Prediction(torch.zeros_like(z_in), torch.zeros_like(z_in))

    denoise = replacement(spy, x_a, known, generator=torch.Generator().manual_seed(2))
    z = torch.randn(1, 3, 4, 4, 4, generator=gen)
    logsnr = torch.tensor([0.5])
    alpha, sigma = alpha_sigma(logsnr.double())
    for _ in range(4000):
        denoise(z, logsnr)
    zs = torch.stack(seen)  # [N, 1, 3, 4, 4, 4]
    za = zs[:, :, :, :2]
    torch.testing.assert_close(za.mean(0), float(alpha) * x_a[:, :, :2], atol=0.06, rtol=0)
    std = za.std(0)
    assert abs(std.mean().item() - float(sigma)) < 0.02, (std.mean().item(), float(sigma))
    assert std.min().item() > 0.8 * float(sigma)  # every known pixel is re-noised, none kept fixed
    torch.testing.assert_close(zs[:, :, :, 2:], z[:, :, 2:].expand_as(zs[:, :, :, 2:]))
