import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.diffusion.guidance import guide, guided_denoiser
from kinema.diffusion.objective import Denoiser, Prediction, coefficients, prediction_from_output


def _net(calls):
    def net(z, logsnr, cond):
        calls.append(z.shape[0])
        return z * 0.5 + cond.class_labels.to(z.dtype).reshape(-1, 1)
    return net


def test_guidance_is_one_batched_forward_and_w0_is_conditional():
    calls = []
    den = Denoiser(_net(calls), "eps")
    z = torch.randn(3, 4)
    logsnr = torch.zeros(3)
    cond = Conditioning(class_labels=torch.tensor([1, 2, 3]))
    uncond = Conditioning(class_labels=torch.tensor([0, 0, 0]))
    guided = guided_denoiser(den, cond, uncond, 2.0)(z, logsnr)
    assert calls == [6]
    c, u = den(z, logsnr, cond), den(z, logsnr, uncond)
    torch.testing.assert_close(guided.eps, 3.0 * c.eps - 2.0 * u.eps)
    plain = guided_denoiser(den, cond, uncond, 0.0)(z, logsnr)
    torch.testing.assert_close(plain.x, c.x)
    torch.testing.assert_close(plain.eps, c.eps)


def test_mixing_in_eps_or_v_space_is_the_same():
    """Guidance combines outputs linearly; for a fixed z, eps-, v- and x-space mixing coincide."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 3, 2, 4, 4, generator=g, dtype=torch.float64)
    logsnr = torch.linspace(-4, 4, 5, dtype=torch.float64)
    a, s = coefficients(logsnr, z)
    out_c, out_u = torch.randn(2, *z.shape, generator=g, dtype=torch.float64)
    w = 1.5
    for param in ("eps", "v", "x"):
        mixed_output = (1 + w) * out_c - w * out_u
        direct = prediction_from_output(mixed_output, z, a, s, param)
        via = guide(prediction_from_output(out_c, z, a, s, param), prediction_from_output(out_u, z, a, s, param), w)
        torch.testing.assert_close(via.x, direct.x)
        torch.testing.assert_close(via.eps, direct.eps)


def test_per_example_weights():
    c = Prediction(torch.ones(2, 3), torch.ones(2, 3))
    u = Prediction(torch.zeros(2, 3), torch.zeros(2, 3))
    out = guide(c, u, torch.tensor([0.0, 1.0]))
    assert out.x[:, 0].tolist() == [1.0, 2.0]


def test_oscillating_weights_hold_then_alternate():
    from kinema.diffusion.guidance import oscillating_guidance_weights

    assert oscillating_guidance_weights(8, 15.0, 1.0, 0.25) == [15, 15, 1, 15, 1, 15, 1, 15]
    assert oscillating_guidance_weights(3, 4.0, 0.0, 1.0) == [4.0] * 3
    assert oscillating_guidance_weights(4, 4.0, 0.0, 0.0) == [0.0, 4.0, 0.0, 4.0]
    with pytest.raises(ValueError, match="constant_fraction"):
        oscillating_guidance_weights(4, 4.0, 0.0, 1.5)


def test_step_weights_reach_the_denoiser_at_their_step():
    """A per-step weight schedule, looked up from the noise level (no step counter), gives each
    sampler step exactly its own weight: a sampler run equals one with that weight at that step."""
    from kinema.diffusion.guidance import weight_by_logsnr
    from kinema.diffusion.samplers import sample_ddim
    from kinema.diffusion.schedule import Schedule, sampling_grid

    grid = sampling_grid(Schedule("cosine"), 6)
    weights = [3.0, 0.0, 2.0, 0.5, 1.0, 4.0]
    w = weight_by_logsnr(grid, weights)
    assert w(grid[:6].float()).tolist() == weights
    seen = []
    den = Denoiser(_net([]), "eps")
    cond = Conditioning(class_labels=torch.tensor([1, 2]))
    uncond = Conditioning(class_labels=torch.tensor([0, 0]))
    guided = guided_denoiser(den, cond, uncond, lambda l: seen.append(w(l)) or w(l))
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    sample_ddim(guided, z, grid)
    assert [s.tolist() for s in seen] == [[x, x] for x in weights]
    with pytest.raises(ValueError, match="guidance weights"):
        weight_by_logsnr(grid, weights[:3])


def test_guidance_interval_guides_inside_only_and_skips_the_unconditional_pass_outside():
    from kinema.diffusion.guidance import guidance_interval, weight_by_logsnr
    from kinema.diffusion.samplers import sample_ddim
    from kinema.diffusion.schedule import Schedule, sampling_grid

    logsnr = torch.tensor([-5.0, -1.0, 0.0, 0.5, 3.0], dtype=torch.float64)
    assert guidance_interval(2.0, (None, 0.0))(logsnr).tolist() == [2.0, 2.0, 0.0, 0.0, 0.0]
    assert guidance_interval(2.0, (-1.0, 1.0))(logsnr).tolist() == [0.0, 2.0, 2.0, 2.0, 0.0]
    assert guidance_interval(2.0, (0.5, None))(logsnr).tolist() == [0.0, 0.0, 0.0, 2.0, 2.0]
    assert guidance_interval(2.0, None) == 2.0
    # composes with per-step weights (oscillating guidance): the step's own weight inside, 0 outside
    grid = sampling_grid(Schedule("cosine"), 6)
    steps = [3.0, 1.0, 2.0, 0.5, 1.0, 4.0]
    limited = guidance_interval(weight_by_logsnr(grid, steps), (None, 0.0))
    want = [w if float(g) < 0 else 0.0 for w, g in zip(steps, grid[:6])]
    assert 0.0 in want and any(w > 0 for w in want)
    assert limited(grid[:6]).tolist() == want
    # the sampler run: 2B forwards at the guided steps, B forwards (the conditional pass alone) at the others,
    # with the same result as guiding every step with the interval's weights
    calls = []
    den = Denoiser(_net(calls), "eps")
    cond = Conditioning(class_labels=torch.tensor([1, 2]))
    uncond = Conditioning(class_labels=torch.tensor([0, 0]))
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    out = sample_ddim(guided_denoiser(den, cond, uncond, limited), z, grid)
    assert calls == [4 if w else 2 for w in want]
    reference = sample_ddim(guided_denoiser(Denoiser(_net([]), "eps"), cond, uncond, weight_by_logsnr(grid, want)), z, grid)
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize("bad,match", [((1.0, 0.0), "lo < hi"), ((0.0,), r"\[lo, hi\]"),
                                       ((float("nan"), 1.0), r"\[lo, hi\]"), (("a", 1.0), r"\[lo, hi\]")])
def test_guidance_interval_refuses_bad_bounds_naming_them(bad, match):
    from kinema.diffusion.guidance import guidance_interval

    with pytest.raises(ValueError, match=match):
        guidance_interval(2.0, bad)
