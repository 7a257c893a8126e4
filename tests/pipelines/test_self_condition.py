"""Self-conditioning at sampling time (Chen et al. 2022, "Analog Bits", Algorithm 2): the sampling
pipelines carry the last estimate x_hat across the stateless sampler's denoiser calls, give the same
x_hat to both halves of a classifier-free-guided call, start each run without one, and stay
deterministic given a seed."""

import pytest
import torch

from kinema.config import load_config
from kinema.diffusion.objective import Prediction
from kinema.pipelines.extend import extend_video
from kinema.pipelines.sample import SamplingNet, label_guided, make_conditioning, sample_videos
from kinema.pipelines.upsample import upsample_video
from kinema.system import build_system
from model_helpers import randomize


def walt_system(self_condition=True):
    cfg = load_config(None, ["model.name=walt", "model.walt.hidden_dim=16", "model.walt.depth=2", "model.walt.heads=2",
                             "model.walt.spatiotemporal_window=[2,4,4]", "model.walt.max_frames=8",
                             "model.walt.num_classes=2", f"model.walt.self_condition={str(self_condition).lower()}",
                             "data.num_frames=4", "data.size=16", "sample.steps=3"])
    system = build_system(cfg)
    randomize(system.model, seed=3, std=0.1).eval()
    return system


def estimates_seen(model):
    """The cond.self_cond of every model call (None when unset)."""
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[2].self_cond if args[2] is not None else None))
    return seen


def test_guided_calls_get_the_last_guided_estimate_in_both_halves():
    system = walt_system()
    net = SamplingNet(system, "fp32")
    cond = make_conditioning(system, 2, class_labels=[0, 1])
    denoise = net.track(label_guided(net, cond, 2.0))
    seen = estimates_seen(system.model)
    z, logsnr = torch.randn(2, 3, 4, 16, 16), torch.tensor([-2.0, -2.0])
    with torch.no_grad():
        first = denoise(z, logsnr)
        denoise(z, logsnr + 1)
    assert isinstance(first, Prediction) and seen[0] is None, "the first step has no estimate"
    assert seen[1].shape[0] == 4 and torch.equal(seen[1], torch.cat([first.x, first.x])), \
        "both halves of the guided call get the guided x_hat of the previous step"
    net.track(denoise)  # a new run starts without an estimate
    assert net.x_hat is None


def test_sampling_is_deterministic_and_uses_the_estimate():
    system = walt_system()
    cond = make_conditioning(system, 2, class_labels=[0, 1])
    seen = estimates_seen(system.model)
    a = sample_videos(system, 2, seed=5, cond=cond, guidance=1.0, progress=False)
    assert len(seen) == 3 and seen[0] is None and all(s is not None and s.abs().sum() > 0 for s in seen[1:])
    b = sample_videos(system, 2, seed=5, cond=cond, guidance=1.0, progress=False)
    c = sample_videos(system, 2, seed=6, cond=cond, guidance=1.0, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = walt_system(self_condition=False)
    plain_seen = estimates_seen(plain.model)
    sample_videos(plain, 1, seed=5, progress=False)
    assert plain_seen == [None] * 3, "a backbone without self-conditioning never gets an estimate"


@pytest.mark.parametrize("pipeline", ["extend", "upsample"])
def test_extend_and_upsample_carry_the_estimate_per_run(pipeline):
    system = walt_system()
    seen = estimates_seen(system.model)
    video = torch.rand(1, 3, 4, 8 if pipeline == "upsample" else 16, 8 if pipeline == "upsample" else 16) * 2 - 1

    def run(seed):
        if pipeline == "extend":
            return extend_video(system, video, 8, method="replacement", steps=3, seed=seed, progress=False)
        return upsample_video(system, video, steps=3, seed=seed, progress=False)

    out = run(1)
    runs = [seen[i:i + 3] for i in range(0, len(seen), 3)]  # 3 steps per window
    assert len(runs) == (2 if pipeline == "extend" else 1)
    assert all(r[0] is None and r[1] is not None and r[2] is not None for r in runs), "each window starts afresh"
    assert torch.equal(out, run(1))
