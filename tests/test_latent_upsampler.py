"""The latent upsampler (Video LDM, Blattmann et al. 2023, section 3.2): an SR stage whose diffusion runs on
the latents of the high-resolution video and reads the low-resolution *pixel* video (derived from the pixel
clip before encoding, never from latents), with noise augmentation; sampled after a pixel or a latent base in
`kinema cascade`, and by `kinema upsample`."""

from pathlib import Path

import pytest
import torch

from conftest import tiny_overrides
from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.conditioning import Conditioning
from kinema.config import load_config
from kinema.data.io import write_video
from kinema.diffusion.objective import LocalRandom, TrainBatch
from kinema.diffusion.superres import degrade
from kinema.pipelines.sample import lowres_conditioning
from kinema.system import build_objective, build_system
from kinema.train.loop import Trainer
from test_autoencoder_training import TINY_AE, ae_overrides
from test_latent_space import cascade_with_lowres


@pytest.fixture(scope="module")
def image_ae(tmp_path_factory):
    """A tiny frame-wise autoencoder (temporal_factor 1, spatial_factor 2, 4 latent channels), 1 step."""
    run = tmp_path_factory.mktemp("image_ae") / "run"
    over = {**{f"model.causal_ae.{k}": v for k, v in TINY_AE.items()}, "model.causal_ae.spatial_factor": 2,
            "model.causal_ae.temporal_factor": 1, "data.num_frames": 1, "train.steps": 1, "train.ckpt_every": 0}
    trainer = Trainer(load_config(None, ae_overrides(run, **over)))
    trainer.fit()
    return trainer.save()


def upsampler_cfg(out_dir, ae, size=16, spatial=2, **extra):
    """A latent SR stage: unet3d on 4-channel latents reading 3-channel low-res pixels and their level."""
    over = {"model.space": "latent", "model.autoencoder": str(ae), "model.unet.in_channels": 4,
            "model.unet.extra_in_channels": 3, "model.unet.scalar_conditions": "[lowres_logsnr]",
            "data.dataset": "bouncing_shapes", "data.size": size, "sr.spatial_factor": spatial, "sr.aug_max": 0.5,
            "sr.sample_aug": 0.1, "train.steps": 1, "train.ckpt_every": 1, "train.batch_size": 1,
            "sample.steps": 2, **extra}
    return load_config(None, tiny_overrides(out_dir, **over))


def test_lowres_comes_from_the_pixel_clip_at_the_pixel_grid_not_from_the_latents(image_ae, tmp_path):
    cfg = upsampler_cfg(tmp_path, image_ae, **{"sr.aug_max": 0.0})
    system = build_system(cfg)
    objective = build_objective(cfg, system.spec)
    seen = []

    def net(z, logsnr, cond):
        seen.append(cond.lowres)
        return system.model(z, logsnr, cond)

    pixels = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = system.space.encode(pixels)
    assert z.shape == (2, 4, 4, 8, 8)
    for latents in (z, torch.randn_like(z)):  # other latents, same pixels: the same low-res input
        loss, _ = objective({"model": net}, TrainBatch(latents, Conditioning(), {}, pixels=pixels),
                            LocalRandom(torch.Generator().manual_seed(1), 2))
        assert torch.isfinite(loss)
    assert seen[0].shape == (2, 3, 4, 8, 8), "low-res pixels, 3 channels, on the 8x8 latent grid"
    assert torch.equal(seen[0], degrade(pixels, 2)) and torch.equal(seen[1], seen[0])
    # the trainer hands the hook the pixel clip it encodes
    trainer = Trainer(upsampler_cfg(tmp_path / "t", image_ae))
    got = []
    trainer.model.register_forward_pre_hook(lambda m, args: got.append(args[2].lowres.shape))
    trainer.fit()
    assert got and all(s == (1, 3, 4, 8, 8) for s in got)


def test_latent_upsampler_config_errors_name_the_pixel_channels(image_ae, tmp_path):
    with pytest.raises(ValueError, match="extra_in_channels = the pixel channels = 3"):
        build_system(upsampler_cfg(tmp_path, image_ae, **{"model.unet.extra_in_channels": 0}))


def test_augmentation_level_zero_is_the_identity_and_inputs_are_pixels(image_ae, tmp_path):
    system = build_system(upsampler_cfg(tmp_path, image_ae))
    low = torch.rand(1, 3, 4, 8, 8) * 2 - 1
    cond = lowres_conditioning(system, low, level=0.0)
    assert torch.equal(cond.lowres, low) and cond.lowres_logsnr.shape == (1,)
    noised = lowres_conditioning(system, low, level=0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(noised.lowres, low) and noised.lowres_logsnr[0] < cond.lowres_logsnr[0]
    with pytest.raises(ValueError, match=r"\[B, 3, 4, 8, 8\] low-resolution videos"):
        lowres_conditioning(system, torch.rand(1, 4, 4, 8, 8), level=0.0)  # latents are not the input


def test_a_latent_base_hands_a_latent_upsampler_its_decoded_pixels(image_ae, tmp_path):
    base = build_system(upsampler_cfg(tmp_path / "b", image_ae, size=8, **{
        "model.unet.extra_in_channels": 0, "model.unet.scalar_conditions": "[]", "sr.spatial_factor": 1,
        "sr.aug_max": 0.0, "sr.sample_aug": 0.0}))
    up = build_system(upsampler_cfg(tmp_path / "u", image_ae))
    plan, low, high, seen = cascade_with_lowres(base, up)
    assert plan[0].makes == (3, 4, 8) == plan[1].takes
    assert low.shape == (1, 3, 4, 8, 8) and high.shape == (1, 3, 4, 16, 16)
    assert torch.equal(seen[0], low), "the upsampler reads the base's decoded pixels, not its latents"


@pytest.mark.slow
def test_kinema_cascade_and_upsample_with_a_latent_upsampler_after_a_pixel_base(image_ae, tmp_path, capsys):
    base_cfg = load_config(None, tiny_overrides(tmp_path / "base", **{
        "data.dataset": "bouncing_shapes", "data.size": 8, "train.steps": 1, "train.ckpt_every": 1,
        "train.batch_size": 1, "sample.steps": 2}))
    Trainer(base_cfg).fit()
    up_cfg = upsampler_cfg(tmp_path / "up", image_ae)
    Trainer(up_cfg).fit()
    base, up = (ckpt_io.resolve_checkpoint(Path(c.train.out_dir)) for c in (base_cfg, up_cfg))
    out = tmp_path / "video.png"
    assert main(["cascade", str(base), str(up), "--num", "1", "--stage-steps", "2", "--out", str(out)]) == 0
    assert "cascade of 2 stages wrote 1 videos of (3, 4, 16, 16)" in capsys.readouterr().out and out.exists()
    small = tmp_path / "small.gif"
    write_video(small, torch.rand(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, fps=4)
    assert main(["upsample", str(up), "--input", str(small), "--steps", "2", "--out", str(tmp_path / "up.gif")]) == 0
    assert (tmp_path / "up.gif").exists()


def test_the_latent_toy_recipe_presets_chain_run_directories():
    """README "Video LDM": autoencoder -> image LDM -> temporal alignment, each reading the previous run."""
    ae, ldm, video = (load_config(n) for n in ("image_ae_bouncing_shapes", "image_ldm_latent_bouncing_shapes",
                                               "video_ldm_latent_bouncing_shapes"))
    assert ae.model.causal_ae.temporal_factor == 1 and ae.train.objective == "autoencoder"
    assert ldm.model.autoencoder == video.model.autoencoder == ae.train.out_dir
    assert video.model.video_ldm.base_path == ldm.train.out_dir and ldm.data.num_frames == 1
    assert ldm.model.space == video.model.space == "latent" and video.model.name == "video_ldm"
    assert ldm.model.unet.in_channels == ae.model.causal_ae.latent_channels
    assert (ldm.data.size, video.data.size) == (ae.data.size, ae.data.size)
