"""The noise prior (diffusion/noise.py): i.i.d. by default, PYoCo mixed noise across frames."""

import pytest
import torch

from kinema.diffusion.noise import FrameCorrelatedNoise, noise_prior, standard_normal


def test_rho_zero_draws_exactly_the_iid_noise():
    a = FrameCorrelatedNoise(0.0)((2, 3, 4, 5, 5), torch.Generator().manual_seed(3))
    b = torch.randn((2, 3, 4, 5, 5), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert noise_prior(0.0) is standard_normal


@pytest.mark.parametrize("rho", [0.3, 0.8])
def test_frame_noise_is_standard_normal_per_frame_with_correlation_rho(rho):
    """Each frame's noise is N(0, 1) (the VP marginal is unchanged); two frames of a clip correlate by
    rho; different clips and channels are independent."""
    eps = FrameCorrelatedNoise(rho)((4000, 2, 3, 2, 2), torch.Generator().manual_seed(0))  # [B, C, F, H, W]
    assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    a, b = eps[:, :, 0].flatten(), eps[:, :, 2].flatten()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item() - rho) < 0.03
    other_clip = eps[torch.randperm(4000, generator=torch.Generator().manual_seed(1)), :, 2].flatten()
    assert abs(torch.corrcoef(torch.stack([a, other_clip]))[0, 1].item()) < 0.03
    assert abs(torch.corrcoef(torch.stack([eps[:, 0, 0].flatten(), eps[:, 1, 0].flatten()]))[0, 1].item()) < 0.03


def test_independent_images_get_their_own_shared_noise():
    """Joint image-video training: frames of the clip (segment 0) share noise, appended images (segments
    1, 2) are independent of the clip and of each other."""
    segments = torch.tensor([[0, 0, 0, 1, 2]]).expand(3000, -1)
    eps = FrameCorrelatedNoise(0.9)((3000, 1, 5, 2, 2), torch.Generator().manual_seed(0), segments=segments)
    corr = torch.corrcoef(eps[:, 0].permute(1, 0, 2, 3).reshape(5, -1))  # frames x frames
    assert corr[0, 1] > 0.85 and corr[1, 2] > 0.85
    assert corr[2, 3].abs() < 0.05 and corr[3, 4].abs() < 0.05 and corr[0, 4].abs() < 0.05


def test_bad_correlations_and_shapes_are_refused():
    for rho in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="frame noise correlation"):
            FrameCorrelatedNoise(rho)
    with pytest.raises(ValueError, match="video shape"):
        FrameCorrelatedNoise(0.5)((2, 3, 4))
    with pytest.raises(ValueError, match="segment ids"):
        FrameCorrelatedNoise(0.5)((1, 1, 2, 2, 2), segments=torch.tensor([[0, 5]]))


def _frame_corr(z):  # correlation of frames 0 and 1 of z [B, C, F, H, W]
    return torch.corrcoef(torch.stack([z[:, :, 0].flatten(), z[:, :, 1].flatten()]))[0, 1].item()


def test_ancestral_sampling_follows_the_prior():
    """DDPM's fresh noise comes from the prior: with a denoiser that predicts x = 0, z stays pure noise
    of the prior's correlation under the correlated prior, and decorrelates under i.i.d. noise."""
    from kinema.diffusion.objective import Prediction
    from kinema.diffusion.samplers import sample_ddpm

    def zero(z, logsnr):
        sigma = torch.sigmoid(-logsnr.double()).sqrt().to(z)[:, None, None, None, None]
        return Prediction(torch.zeros_like(z), z / sigma)

    prior = FrameCorrelatedNoise(0.9)
    grid = torch.linspace(-6.0, 4.0, 9, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    z0 = prior((500, 2, 2, 4, 4), gen)
    correlated = sample_ddpm(zero, z0, grid, generator=gen, noise=prior)
    iid = sample_ddpm(zero, z0, grid, generator=gen)
    assert abs(_frame_corr(correlated) - 0.9) < 0.03
    assert _frame_corr(iid) < 0.3


def test_training_noise_follows_the_configured_prior():
    from kinema.diffusion.objective import DiffusionObjective, LocalRandom, TrainBatch
    from kinema.diffusion.schedule import Schedule

    seen = []

    def spy(z, logsnr, cond=None):
        seen.append(z)
        return torch.zeros_like(z)

    x = torch.zeros(400, 1, 3, 4, 4)  # z = sigma * eps: the noise itself, scaled per item
    for rho in (0.0, 0.7):
        DiffusionObjective(Schedule("cosine"), "v", "v", noise=noise_prior(rho))(
            {"model": spy}, TrainBatch(x, None, {}), LocalRandom(torch.Generator().manual_seed(0), 400))
        assert abs(_frame_corr(seen[-1]) - rho) < 0.06
