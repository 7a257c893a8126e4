import math

import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.config import load_config
from kinema.diffusion.objective import (
    Denoiser,
    LocalRandom,
    TrainBatch,
    coefficients,
    diffusion_loss,
    loss_weight,
    output_from_prediction,
    preconditioning,
    prediction_from_output,
    sample_t,
)
from kinema.diffusion.schedule import Schedule
from kinema.system import build_objective


def _setup(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 2, 4, 4, generator=g, dtype=dtype)
    eps = torch.randn(6, 3, 2, 4, 4, generator=g, dtype=dtype)
    logsnr = torch.linspace(-8, 8, 6, dtype=torch.float64)
    alpha, sigma = coefficients(logsnr, x)
    return x, eps, alpha, sigma, alpha * x + sigma * eps


@pytest.mark.parametrize("param", ["eps", "x", "v"])
def test_parameterization_round_trip(param):
    x, eps, alpha, sigma, z = _setup()
    out = output_from_prediction(x, eps, alpha, sigma, param)
    pred = prediction_from_output(out, z, alpha, sigma, param)
    torch.testing.assert_close(pred.x, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(pred.eps, eps, rtol=0, atol=1e-9)


@pytest.mark.parametrize("sigma_data", [0.25, 0.5, 2.0])
def test_sigma_data_round_trip_and_plain_v_at_one(sigma_data):
    """EDM's preconditioning of the v output: output -> (x_hat, eps_hat) inverts target, and s = 1 is plain v."""
    x, eps, alpha, sigma, z = _setup()
    out = output_from_prediction(x, eps, alpha, sigma, "v", sigma_data)
    pred = prediction_from_output(out, z, alpha, sigma, "v", sigma_data)
    torch.testing.assert_close(pred.x, x, rtol=0, atol=1e-9)
    torch.testing.assert_close(pred.eps, eps, rtol=0, atol=1e-9)
    c_skip, c_out, _ = preconditioning(alpha, sigma, 1.0)
    torch.testing.assert_close(c_skip, alpha)
    torch.testing.assert_close(c_out, sigma)
    torch.testing.assert_close(output_from_prediction(x, eps, alpha, sigma, "v", 1.0), alpha * eps - sigma * x)


@pytest.mark.parametrize("sigma_data", [0.25, 0.5, 1.0])
def test_sigma_data_gives_a_unit_variance_target_and_moves_the_crossover(sigma_data):
    """For data of standard deviation s the target has unit variance at every noise level (Karras et al. 2022,
    appendix B.6), and the output switches from predicting x (c_skip alpha ~ 0) to correcting z (~ 1), passing
    1/2 at log-SNR = -2 log s."""
    g = torch.Generator().manual_seed(3)
    logsnr = torch.tensor([-10.0, -2.0, 0.0, 3.0, 10.0], dtype=torch.float64)
    x = sigma_data * torch.randn(5, 200_000, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 200_000, generator=g, dtype=torch.float64)
    alpha, sigma = coefficients(logsnr, x)
    target = output_from_prediction(x, eps, alpha, sigma, "v", sigma_data)
    torch.testing.assert_close(target.var(dim=1), torch.ones(5, dtype=torch.float64), rtol=0, atol=0.02)
    mid = torch.tensor([-2 * math.log(sigma_data), -10.0, 10.0], dtype=torch.float64)
    a, s = coefficients(mid, mid[:, None])
    c_skip, _, _ = preconditioning(a, s, sigma_data)
    torch.testing.assert_close((c_skip * a).flatten(), torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64),
                               rtol=0, atol=5e-4 / sigma_data ** 2)


def test_sigma_data_is_checked():
    x, eps, alpha, sigma, z = _setup()
    with pytest.raises(ValueError, match=r"sigma_data must be > 0, got 0$"):
        output_from_prediction(x, eps, alpha, sigma, "v", 0.0)
    with pytest.raises(ValueError, match=r"sigma_data=0.5 applies to parameterization 'v' only, got .* 'x'"):
        Denoiser(lambda z, lam, c: z, "x", 0.5)
    with pytest.raises(ValueError, match=r"sigma_data=0.5 applies to parameterization 'v' only.*'eps'"):
        build_objective(load_config("demo_text", ["diffusion.parameterization=eps", "diffusion.sigma_data=0.5"]))


def test_v_definition_and_cross_conversions():
    x, eps, alpha, sigma, z = _setup()
    v = output_from_prediction(x, eps, alpha, sigma, "v")
    torch.testing.assert_close(v, alpha * eps - sigma * x)
    # converting eps -> v -> x -> eps returns to the start
    via_v = prediction_from_output(v, z, alpha, sigma, "v")
    x_out = output_from_prediction(via_v.x, via_v.eps, alpha, sigma, "x")
    torch.testing.assert_close(prediction_from_output(x_out, z, alpha, sigma, "x").eps, eps, rtol=0, atol=1e-9)


def test_unknown_parameterization():
    x, eps, alpha, sigma, z = _setup()
    with pytest.raises(ValueError, match="'w'"):
        prediction_from_output(x, z, alpha, sigma, "w")


def test_stratified_t_is_low_discrepancy():
    g = torch.Generator().manual_seed(1)
    t = sample_t(16, "stratified", generator=g)
    assert t.min() >= 0 and t.max() < 1
    counts = torch.histc(t, bins=16, min=0, max=1)
    assert torch.all(counts == 1), "one sample per stratum"
    with pytest.raises(ValueError, match="sobol"):
        sample_t(4, "sobol")


@pytest.mark.parametrize("param", ["eps", "x", "v", ("v", 0.5), ("v", 0.25)])
@pytest.mark.parametrize("weighting", ["eps", "x", "v", "min_snr"])
def test_weighted_losses_agree_across_parameterizations(param, weighting):
    """The same imperfect denoiser gives the same weighted loss whatever space the net outputs (for v, with
    any sigma_data: the weightings are defined in units of the x-error)."""
    param, sigma_data = param if isinstance(param, tuple) else (param, 1.0)
    x, eps, alpha, sigma, z = _setup()
    t = torch.linspace(0.05, 0.95, 6, dtype=torch.float64)
    schedule = Schedule()

    def net_for(p):
        def net(z_, logsnr, cond):
            a, s = coefficients(logsnr.to(torch.float64), z_)
            x_hat = 0.8 * z_ * a  # a deliberately wrong estimate of x
            eps_hat = (z_ - a * x_hat) / s
            return output_from_prediction(x_hat, eps_hat, a, s, p, sigma_data if p == param else 1.0)
        return net

    ref = diffusion_loss(net_for("x"), x, schedule=schedule, parameterization="x", weighting=weighting, t=t, noise=eps)
    got = diffusion_loss(net_for(param), x, schedule=schedule, parameterization=param, weighting=weighting, t=t,
                         noise=eps, sigma_data=sigma_data)
    torch.testing.assert_close(got.per_example, ref.per_example, rtol=1e-6, atol=1e-9)


def test_min_snr_weight_caps_snr():
    lam = torch.tensor([-5.0, 0.0, 5.0], dtype=torch.float64)
    w = loss_weight(lam, "min_snr", "x", min_snr_gamma=5.0)
    torch.testing.assert_close(w, torch.minimum(lam.exp(), torch.tensor(5.0, dtype=torch.float64)))
    with pytest.raises(ValueError, match="huber"):
        loss_weight(lam, "huber", "x")


def test_perfect_denoiser_has_zero_loss_and_gradients_flow():
    x, eps, *_ = _setup(torch.float32)
    w = torch.nn.Parameter(torch.tensor(1.0))

    def net(z, logsnr, cond):
        return w * eps  # eps-prediction that knows the noise

    out = diffusion_loss(net, x, parameterization="eps", weighting="eps", noise=eps)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)
    w.data.fill_(0.5)
    out = diffusion_loss(net, x, parameterization="eps", weighting="eps", noise=eps)
    out.loss.backward()
    assert w.grad is not None and w.grad.abs().item() > 0


def test_frame_weight_ignores_masked_frames():
    x, eps, *_ = _setup(torch.float32)

    def net(z, logsnr, cond):
        out = eps.clone()
        out[:, :, 1] += 3.0  # error only in frame 1
        return out

    fw = torch.tensor([[1.0, 0.0]] * 6)
    out = diffusion_loss(net, x, parameterization="eps", weighting="eps", noise=eps, frame_weight=fw)
    assert out.loss.item() == pytest.approx(0.0, abs=1e-10)


def test_denoiser_wrapper_broadcasts_scalar_logsnr():
    x, eps, *_ = _setup(torch.float32)
    seen = {}

    def net(z, logsnr, cond):
        seen["logsnr"] = logsnr
        return torch.zeros_like(z)

    pred = Denoiser(net, "eps")(x, 2.0)
    assert seen["logsnr"].shape == (6,) and seen["logsnr"].dtype == torch.float32
    a, _ = coefficients(torch.full((6,), 2.0, dtype=torch.float64), x)
    torch.testing.assert_close(pred.x, x / a)


@pytest.mark.parametrize("param", ["x", "v"])
def test_self_conditioned_net_feeds_a_stop_gradient_estimate_to_the_chosen_items(param):
    from kinema.conditioning import Conditioning
    from kinema.diffusion.objective import self_conditioned

    calls = []
    weight = torch.tensor(0.5, requires_grad=True)

    def net(z, logsnr, cond):  # records what each pass sees; output depends on the estimate
        calls.append((z.shape[0], torch.is_grad_enabled(), cond.self_cond, cond.class_labels))
        extra = 0 if cond.self_cond is None else cond.self_cond
        return weight * z + extra

    g = torch.Generator().manual_seed(0)
    z, logsnr = torch.randn(3, 1, 2, 4, 4, generator=g), torch.tensor([-1.0, 0.0, 2.0])
    cond = Conditioning(class_labels=torch.tensor([4, 5, 6]))
    out = self_conditioned(net, torch.tensor([True, False, True]), param)(z, logsnr, cond)
    (first_b, first_grad, first_est, first_labels), (second_b, _, x_hat, labels) = calls
    assert (first_b, first_grad, first_est, first_labels.tolist()) == (2, False, None, [4, 6])
    assert second_b == 3 and torch.equal(labels, cond.class_labels) and cond.self_cond is None
    alpha, sigma = coefficients(logsnr[[0, 2]].double(), z[[0, 2]])
    expected = prediction_from_output(0.5 * z[[0, 2]], z[[0, 2]], alpha, sigma, param).x
    torch.testing.assert_close(x_hat[[0, 2]], expected)
    assert torch.count_nonzero(x_hat[1]) == 0 and not x_hat.requires_grad
    out.sum().backward()
    torch.testing.assert_close(weight.grad, z.sum())  # the gradient flows through the second pass only


def test_high_noise_weight_scales_the_high_noise_end_only():
    lam = torch.tensor([-30.0, 0.0, 30.0], dtype=torch.float64)
    for weighting in ("v", "x", "eps", "min_snr"):
        base = loss_weight(lam, weighting, "v")
        torch.testing.assert_close(loss_weight(lam, weighting, "v", high_noise_weight=1.0), base)
        ratio = loss_weight(lam, weighting, "v", high_noise_weight=3.0) / base
        torch.testing.assert_close(ratio, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="high_noise_weight must be > 0, got 0"):
        loss_weight(lam, "v", "v", high_noise_weight=0.0)


def test_max_weight_caps_the_weight_in_x_units():
    """diffusion.max_weight caps the target weighting (in units of the x-error) before it is turned into a
    factor on the parameterization's own MSE: with x-prediction and v weighting the factor is min(1 + SNR, cap)."""
    lam = torch.tensor([-10.0, 0.0, math.log(99.0), 8.0, 15.0], dtype=torch.float64)
    snr = lam.exp()
    torch.testing.assert_close(loss_weight(lam, "v", "x"), 1 + snr)
    torch.testing.assert_close(loss_weight(lam, "v", "x", max_weight=100.0), (1 + snr).clamp(max=100.0))
    # the same cap seen from v-prediction: a factor of 1 below the cap, cap / (1 + SNR) above it
    capped = loss_weight(lam, "v", "v", max_weight=100.0)
    torch.testing.assert_close(capped[:3], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(capped[3:], 100.0 / (1 + snr[3:]))
    torch.testing.assert_close(loss_weight(lam, "min_snr", "x", max_weight=3.0), snr.clamp(max=3.0))
    with pytest.raises(ValueError, match=r"max_weight must be >= 0 .*got -1$"):
        loss_weight(lam, "v", "x", max_weight=-1.0)


def test_max_weight_reaches_the_training_loss():
    """diffusion.max_weight goes from the config through build_objective into the objective's loss: with the
    same draws and a cap below the v weight's minimum of 1 (so it binds at every log-SNR), the capped loss of
    an x-predicting net is the plain one times cap / (1 + SNR)."""
    seen = []

    def net(z, logsnr, cond):
        seen.append(logsnr.double())
        return 0.5 * z

    x = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    losses = {}
    for cap in (0.0, 0.5):
        objective = build_objective(load_config("demo_text", ["diffusion.parameterization=x",
                                                              f"diffusion.max_weight={cap}"]))
        assert objective.max_weight == cap
        losses[cap], _ = objective({"model": net}, TrainBatch(x, Conditioning(), {}),
                                   LocalRandom(torch.Generator().manual_seed(0), 1))
    torch.testing.assert_close(seen[0], seen[1])
    lam = seen[0][0]
    torch.testing.assert_close(losses[0.5], (losses[0.0] * 0.5 / (1 + lam.exp())).float())
    with pytest.raises(ValueError, match=r"max_weight must be >= 0 .*got -2$"):
        build_objective(load_config("demo_text", ["diffusion.max_weight=-2"]))


def test_high_noise_weight_reaches_the_training_loss():
    """diffusion.high_noise_weight goes from the config through build_objective into the objective's loss:
    with the same draws, the loss of one clip is the plain loss times 1 + (h - 1) sigmoid(-lambda)."""
    seen = []

    def net(z, logsnr, cond):
        seen.append(logsnr.double())
        return 0.5 * z  # any fixed imperfect net

    x = torch.randn(1, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    losses = {}
    for h in (1.0, 3.0):
        objective = build_objective(load_config("demo_text", [f"diffusion.high_noise_weight={h}"]))
        assert objective.high_noise_weight == h
        losses[h], _ = objective({"model": net}, TrainBatch(x, Conditioning(), {}),
                                    LocalRandom(torch.Generator().manual_seed(0), 1))
    torch.testing.assert_close(seen[0], seen[1])
    factor = (1 + 2 * torch.sigmoid(-seen[0])).float()
    torch.testing.assert_close(losses[3.0], losses[1.0] * factor[0])
    with pytest.raises(ValueError, match="high_noise_weight must be > 0, got -1"):
        build_objective(load_config("demo_text", ["diffusion.high_noise_weight=-1"]))


def test_sigma_data_reaches_the_training_loss_and_the_sampler():
    """diffusion.sigma_data goes from the config into the objective and into the sampling denoiser: a net that
    outputs the exact target for that s has zero loss, the same net judged with plain v does not, and the
    sampling pipeline's denoiser turns its output back into the clean clip."""
    from kinema.pipelines.sample import SamplingNet
    from kinema.system import build_system

    x = torch.rand(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def exact(s):
        def net(z, logsnr, cond):
            alpha, sigma = coefficients(logsnr.double(), z)
            eps = (z - alpha * x) / sigma
            return output_from_prediction(x, eps, alpha, sigma, "v", s).float()
        return net

    cfg = load_config("demo_text", ["diffusion.sigma_data=0.5"])
    objective = build_objective(cfg)
    assert objective.sigma_data == 0.5
    batch = TrainBatch(x, Conditioning(), {})
    right, _ = objective({"model": exact(0.5)}, batch, LocalRandom(torch.Generator().manual_seed(0), 1))
    wrong, _ = objective({"model": exact(1.0)}, batch, LocalRandom(torch.Generator().manual_seed(0), 1))
    assert float(right) < 1e-8 < 1e-3 < float(wrong)
    system = build_system(cfg)
    sampling = SamplingNet(system)
    assert sampling.denoiser.sigma_data == 0.5
    sampling.denoiser.net = exact(0.5)
    z = 0.8 * x + 0.6 * torch.randn_like(x)
    torch.testing.assert_close(sampling.denoiser(z, math.log(0.8 ** 2 / 0.6 ** 2)).x, x, rtol=0, atol=1e-5)
