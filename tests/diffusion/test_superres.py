"""Super-resolution stages (Imagen Video): the low-resolution input derived from the clip, conditioning
augmentation (level 0 is the identity), the objective hook that feeds it to the network and only it,
and the shape contracts of TSR / SSR stages."""

import dataclasses

import pytest
import torch

from conftest import tiny_overrides
from model_helpers import randomize
from kinema.conditioning import Conditioning, drop_conditioning
from kinema.config import load_config
from kinema.diffusion.objective import LocalRandom, TrainBatch
from kinema.diffusion.schedule import Schedule
from kinema.diffusion.superres import LowResInput, SRConfig, augment_lowres, degrade
from kinema.resize import resize_video
from kinema.system import build_objective, build_system


def sr_overrides(tmp_path, spatial=2, temporal=1, aug=0.3, **extra):
    base = {"model.unet.in_channels": 3, "model.unet.extra_in_channels": 3,
            "model.unet.scalar_conditions": "[lowres_logsnr]", "data.num_frames": 4, "data.size": 16,
            "sr.spatial_factor": spatial, "sr.temporal_factor": temporal, "sr.aug_max": aug}
    base.update(extra)
    return tiny_overrides(tmp_path / "run", **base)


def test_degrade_takes_every_kth_frame_and_shrinks_with_antialiasing():
    video = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    low = degrade(video, spatial_factor=4, temporal_factor=2)
    assert low.shape == (2, 3, 4, 4, 4)
    assert torch.allclose(low, resize_video(video[:, :, ::2], 4, antialias=True))
    # antialiased: a constant frame stays that constant; a 1-pixel checkerboard averages out
    flat = torch.full((1, 1, 2, 16, 16), 0.3)
    assert torch.allclose(degrade(flat, 4), torch.full((1, 1, 2, 4, 4), 0.3), atol=1e-6)
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2).float()[None, None, None].repeat(1, 1, 2, 1, 1)
    assert degrade(checker * 2 - 1, 4).abs().max() < 0.1
    with pytest.raises(ValueError, match="must divide"):
        degrade(video, temporal_factor=3)


def test_augmentation_level_zero_is_bitwise_identity_and_level_follows_the_schedule():
    schedule = Schedule()
    low = torch.rand(3, 3, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(low)
    out, logsnr = augment_lowres(low, torch.zeros(3, dtype=torch.float64), schedule, noise)
    assert torch.equal(out, low)
    assert torch.allclose(logsnr, schedule.logsnr(torch.zeros(3, dtype=torch.float64)))
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    out, logsnr = augment_lowres(low, t, schedule, noise)
    alpha, sigma = schedule.alpha_sigma(t)
    assert torch.equal(out[0], low[0])
    for i in (1, 2):
        assert torch.allclose(out[i], (alpha[i] * low[i] + sigma[i] * noise[i]).float(), atol=1e-6)
    assert logsnr[1] > logsnr[2]  # more noise, lower log-SNR


def test_the_network_sees_only_the_degraded_clip_not_the_high_resolution_target(tmp_path):
    """Perturb the high-resolution clip where the degradation cannot see it (the frames the TSR drops):
    the conditioning the network receives is unchanged; the lowres input is what reaches the network."""
    cfg = load_config(None, sr_overrides(tmp_path, spatial=2, temporal=2, aug=0.5))
    hook = LowResInput(cfg.sr, Schedule(), reads_level=True)
    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    rng = lambda: LocalRandom(torch.Generator().manual_seed(0), 2)  # noqa: E731
    cond_a, _ = hook(x, Conditioning(), rng())
    x_b = x.clone()
    x_b[:, :, 1::2] = torch.rand_like(x_b[:, :, 1::2])  # frames 1, 3: dropped by the x2 TSR degradation
    cond_b, _ = hook(x_b, Conditioning(), rng())
    assert torch.equal(cond_a.lowres, cond_b.lowres) and torch.equal(cond_a.lowres_logsnr, cond_b.lowres_logsnr)
    assert cond_a.lowres.shape == (2, 3, 2, 8, 8)
    assert cond_a.context is None and cond_a.text_emb is None  # nothing else of x leaks into cond
    x_c = x.clone()
    x_c[:, :, 0] += 0.5  # a kept frame: the input changes
    cond_c, _ = hook(x_c, Conditioning(), rng())
    assert not torch.equal(cond_a.lowres, cond_c.lowres)


def test_sr_stage_output_depends_on_the_lowres_input(tmp_path):
    system = build_system(load_config(None, sr_overrides(tmp_path)))
    net = randomize(system.model)
    z = torch.randn(1, 3, 4, 16, 16)
    low = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    logsnr = torch.tensor([0.0])
    cond = Conditioning(lowres=low, lowres_logsnr=torch.tensor([5.0]))
    base = net(z, logsnr, cond)
    moved = net(z, logsnr, dataclasses.replace(cond, lowres=low + 0.1))
    level = net(z, logsnr, dataclasses.replace(cond, lowres_logsnr=torch.tensor([-2.0])))
    assert not torch.allclose(base, moved) and not torch.allclose(base, level)
    # classifier-free guidance never drops the low-resolution input
    dropped = drop_conditioning(cond)
    assert torch.equal(dropped.lowres, cond.lowres) and torch.equal(dropped.lowres_logsnr, cond.lowres_logsnr)


@pytest.mark.parametrize("spatial,temporal", [(2, 1), (1, 2), (2, 2)])
def test_ssr_and_tsr_stage_shape_contracts_in_training(tmp_path, spatial, temporal):
    cfg = load_config(None, sr_overrides(tmp_path, spatial, temporal))
    system = build_system(cfg)
    objective = build_objective(cfg, system.spec)
    seen = {}

    def net(z, logsnr, cond):
        seen["lowres"], seen["level"] = cond.lowres.shape, cond.lowres_logsnr
        return system.model(z, logsnr, cond)

    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    loss, _ = objective({"model": net}, TrainBatch(x, Conditioning(), {}), LocalRandom(torch.Generator(), 2))
    assert seen["lowres"] == (2, 3, 4 // temporal, 16 // spatial, 16 // spatial)
    assert seen["level"].shape == (2,) and torch.isfinite(loss)
    assert cfg.sr.input_shape(4, 16) == (4 // temporal, 16 // spatial)


def test_sr_config_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="extra_in_channels"):
        build_system(load_config(None, sr_overrides(tmp_path, **{"model.unet.extra_in_channels": 0})))
    with pytest.raises(ValueError, match="scalar_conditions"):
        build_system(load_config(None, sr_overrides(tmp_path, **{"model.unet.scalar_conditions": "[]"})))
    with pytest.raises(ValueError, match="sr.temporal_factor=3"):
        build_system(load_config(None, sr_overrides(tmp_path, temporal=3)))
    with pytest.raises(ValueError, match="sr.aug_max"):
        build_system(load_config(None, sr_overrides(tmp_path, aug=1.5)))


def test_sr_config_defaults_are_not_a_stage():
    assert not SRConfig().is_stage and SRConfig(temporal_factor=2).is_stage


@pytest.mark.parametrize("dataset", ["moving_digits", "bouncing_shapes"])
def test_synthetic_frame_stride_gives_the_base_the_frames_a_tsr_stage_degrades_to(dataset):
    """A cascade's base trains on every k-th frame (data.frame_stride=k) of the clips its x k TSR stage
    trains on, so the base's output is what the TSR stage learned to take."""
    from kinema.config import DataConfig
    from kinema.data.factory import build_dataset

    high = build_dataset(DataConfig(dataset=dataset, num_frames=8, size=16, length=4))
    low = build_dataset(DataConfig(dataset=dataset, num_frames=4, size=16, length=4, frame_stride=2))
    for i in range(2):
        assert low[i]["video"].shape[1] == 4
        assert torch.equal(low[i]["video"], degrade(high[i]["video"][None], 1, 2)[0])


def test_trainer_preview_of_an_sr_stage_upsamples_degraded_training_clips(tmp_path):
    from kinema.train.loop import Trainer

    cfg = load_config(None, sr_overrides(tmp_path, spatial=2, temporal=2, **{"train.sample_steps": 2}))
    path = Trainer(cfg).preview(tmp_path / "preview.gif", num=2)
    assert path.stat().st_size > 0
