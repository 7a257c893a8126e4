"""The latent space: a trained autoencoder checkpoint as a frozen part (path + sha256, refused when
it changes), pixel -> latent shapes with errors before compute, scaled encode / decode round trip
through the saved checkpoint, no thresholding, and `kinema sample` of a latent model writing
decoded video, and a tiny W.A.L.T that memorises one latent clip and samples it back."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.conditioning import Conditioning
from kinema.config import ConfigError, load_config
from kinema.models.autoencoder import CausalAE
from kinema.pipelines.cascade import StageSettings, plan_cascade, run_cascade
from kinema.pipelines.sample import sample_videos
from kinema.spaces import LatentSpace
from kinema.system import build_system, load_system
from kinema.train.loop import Trainer
from test_autoencoder_training import ae_overrides


@pytest.fixture(scope="module")
def ae_ckpt(tmp_path_factory):
    """A tiny causal AE (4 latent channels, factors 4 / 4) trained 2 steps on 5 x 16^2 bouncing shapes,
    with its latent std set to 0.5 (scale factor 2) before the final checkpoint."""
    run = tmp_path_factory.mktemp("ae") / "run"
    trainer = Trainer(load_config(None, ae_overrides(run, **{"train.steps": 2, "train.ckpt_every": 0})))
    trainer.fit()
    trainer.model.latent_std.fill_(0.5)
    return trainer.save()


def latent_overrides(out_dir, ae, **extra) -> list[str]:
    base = {"model.name": "walt", "model.space": "latent", "model.autoencoder": str(ae), "model.walt.in_channels": 4,
            "model.walt.hidden_dim": 16, "model.walt.depth": 2, "model.walt.heads": 2,
            "model.walt.spatiotemporal_window": "[0, 0, 0]", "model.walt.max_frames": 8, "data.num_frames": 5,
            "data.size": 16, "train.out_dir": str(out_dir), "train.batch_size": 2, "train.steps": 2,
            "train.warmup_steps": 1, "train.log_every": 1, "train.ckpt_every": 2, "train.sample_every": 0,
            "train.progress": False, "train.tensorboard": False, "sample.steps": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_round_trip_through_the_saved_checkpoint(ae_ckpt, tmp_path):
    system = build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt)))
    space, part = system.space, system.parts["autoencoder"]
    assert isinstance(space, LatentSpace) and space.name == "latent"
    assert not part.trainable and part.source == str(ae_ckpt.resolve()) and part.sha256 == ckpt_io.hash_path(ae_ckpt)
    ae = part.module
    assert isinstance(ae, CausalAE) and not ae.training and not any(p.requires_grad for p in ae.parameters())
    assert ae.scale_factor == pytest.approx(2.0)  # the scale factor travels in the checkpoint
    weights = ckpt_io.load_part_state(ae_ckpt, "model", ema=True)
    assert all(torch.equal(ae.state_dict()[k], v) for k, v in weights.items())  # the EMA weights, exactly
    x = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = space.encode(x)
    assert z.shape == (2, 4, 2, 4, 4) and (2, *space.shape()) == z.shape
    torch.testing.assert_close(z, 2.0 * ae.encode(x))
    video = space.decode(z)
    assert video.shape == x.shape and video.dtype == torch.float32 and video.abs().max() <= 1
    torch.testing.assert_close(video, ae.decode(ae.encode(x)).clamp(-1, 1))
    assert space.thresholding("static") is None and space.thresholding("dynamic") is None  # never clip latents
    with pytest.raises(ValueError, match="unknown thresholding"):
        space.thresholding("soft")


def test_shapes_map_pixels_to_latents_and_errors_come_first(ae_ckpt, tmp_path):
    space = build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt))).space
    assert space.shape() == (4, 2, 4, 4)
    assert space.shape(frames=9, size=32) == (4, 3, 8, 8)
    assert space.shape(frames=1) == (4, 1, 4, 4)  # an image: one latent frame
    with pytest.raises(ValueError, match=r"frames=8 is not 1 \+ 4k: trim to 5 or pad to 9"):
        space.shape(frames=8)
    with pytest.raises(ValueError, match="height=18 is not divisible by the spatial factor 4: crop to 16 or pad to 20"):
        space.shape(size=18)
    with pytest.raises(ValueError, match=r"divisible by 2; the latent video \(2 frames of 3x3 from 5 frames of 12x12"):
        space.shape(size=12)  # 3x3 latents, but the backbone's 1x2x2 patches need even sizes
    with pytest.raises(ValueError, match="the autoencoder takes 3-channel videos but the input video has 1"):
        space.encode(torch.zeros(1, 1, 5, 16, 16))


@pytest.mark.parametrize("extra,message", [
    ({"model.walt.in_channels": 3}, "model.walt.in_channels=3 but the autoencoder .* gives 4-channel latents; set "
                                    "model.walt.in_channels=4"),
    ({"data.num_frames": 8}, r"data.num_frames=8 .* frames=8 is not 1 \+ 4k: trim to 5 or pad to 9"),
    ({"data.size": 12}, "divisible by 2"),
    ({"model.walt.extra_in_channels": 3, "sr.spatial_factor": 2}, "SR stage in the latent space of an autoencoder "
                                                                  "with temporal_factor=4: .* frame-wise"),
    ({"sr.spatial_factor": 2}, "extra_in_channels = the pixel channels = 3 .* the 3-channel pixel video"),
])
def test_config_errors_before_compute(ae_ckpt, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt, **extra)))


def test_autoencoder_path_errors(ae_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="model.space=latent needs model.autoencoder=PATH"):
        build_system(load_config(None, latent_overrides(tmp_path, "", **{"model.autoencoder": "null"})))
    with pytest.raises(ConfigError, match="set model.space=latent"):
        build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt, **{"model.space": "pixel",
                                                                              "model.walt.in_channels": 3})))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_system(load_config(None, latent_overrides(tmp_path, tmp_path / "nowhere")))


@pytest.mark.slow
def test_latent_model_trains_samples_decoded_video_and_refuses_a_different_autoencoder(ae_ckpt, tmp_path, capsys):
    ae_run = Path(shutil.copytree(ae_ckpt.parent.parent, tmp_path / "ae"))  # a copy: this test alters it
    ae_ckpt = ckpt_io.resolve_checkpoint(ae_run)
    run = tmp_path / "walt"
    trainer = Trainer(load_config(None, latent_overrides(run, ae_run)))  # the autoencoder's run directory
    ae = trainer.system.parts["autoencoder"].module
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in ae.parameters()}
    trainer.fit()
    assert all(torch.equal(before[k], v) for k, v in ae.state_dict().items())  # the frozen part never changes
    meta = json.loads((ckpt_io.resolve_checkpoint(run) / "meta.json").read_text())
    assert meta["parts"]["autoencoder"] == {"trainable": False, "source": str(ae_ckpt.resolve()),
                                            "sha256": ckpt_io.hash_path(ae_ckpt)}
    assert "autoencoder" not in {k.split(".")[0] for k in load_file(ckpt_io.resolve_checkpoint(run) / "model.safetensors")}
    system, _ = load_system(run)
    videos = sample_videos(system, 2, steps=2, progress=False)
    assert videos.shape == (2, 3, 5, 16, 16) and videos.abs().max() <= 1  # decoded pixels
    out = tmp_path / "s.gif"
    assert main(["sample", str(run), "--num", "1", "--steps", "2", "--frames", "9", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    capsys.readouterr()
    assert main(["extend", str(run), "--input", str(out), "--frames", "13", "--out", str(tmp_path / "l.gif")]) != 0
    assert "extend needs a model in pixels or on a frame-wise autoencoder (temporal_factor 1)" in capsys.readouterr().err
    # the autoencoder's run goes on training: the latent model still loads the checkpoint it was trained with
    newer = Path(shutil.copytree(ae_ckpt, ae_ckpt.with_name("step-00000099")))
    state = load_file(newer / "model.safetensors")
    state["latent_std"] = torch.tensor(0.25)
    save_file(state, str(newer / "model.safetensors"))
    assert ckpt_io.resolve_checkpoint(ae_run) == newer
    assert load_system(run)[0].parts["autoencoder"].source == str(ae_ckpt.resolve())
    # another autoencoder behind the recorded path: refused
    save_file(state, str(ae_ckpt / "model.safetensors"))
    with pytest.raises(ValueError, match="frozen part 'autoencoder'.*a different autoencoder"):
        load_system(run)


@pytest.mark.slow
def test_tiny_walt_memorizes_one_latent_clip_and_samples_it_back(ae_ckpt, tmp_path):
    """Issue 14, "Done when": a tiny W.A.L.T in the latent space of a tiny causal AE memorises one latent
    clip; sampling from noise gives back the clip's latents and so its decoded video."""
    from kinema.diffusion.objective import LocalRandom, TrainBatch
    from kinema.system import build_objective

    cfg = load_config(None, latent_overrides(tmp_path, ae_ckpt, **{"model.walt.hidden_dim": 32}))
    torch.manual_seed(0)
    system = build_system(cfg)
    model, space = system.model, system.space
    g = torch.Generator().manual_seed(0)
    clip = (torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1).repeat_interleave(2, dim=0)  # one clip, twice
    with torch.no_grad():
        z0 = space.encode(clip)  # [2, 4, 2, 4, 4]
    objective = build_objective(cfg, model.spec)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = LocalRandom(torch.Generator().manual_seed(1), 2)
    for step in range(600):
        if step == 400:  # a lower learning rate to settle
            opt.param_groups[0]["lr"] = 3e-4
        loss, _ = objective({"model": model}, TrainBatch(z0, Conditioning(), {}), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    latents = []
    decode = space.decode
    space.decode = lambda z: latents.append(z) or decode(z)  # record what the sampler hands the decoder
    videos = sample_videos(system, 2, steps=16, sampler="ddim", seed=3, progress=False)
    sampled = latents[0]
    spread = (z0[0] - z0[0].mean()).pow(2).mean()  # the clip's latent variance
    with torch.no_grad():
        other = space.encode(torch.rand(1, 3, 5, 16, 16, generator=g) * 2 - 1)  # another clip's latents
    error, to_other = (sampled - z0).pow(2).mean(dim=(1, 2, 3, 4)), (sampled - other).pow(2).mean(dim=(1, 2, 3, 4))
    assert (error < 0.05 * spread).all(), "both samples (different noise) are the memorised latent clip"
    assert (to_other > 10 * error).all(), "and not just any latent clip"
    with torch.no_grad():
        target = decode(z0)
    assert target.std() > 0.1, "the decoded clip is not flat"
    assert (videos - target).abs().mean() < 0.05, "and decodes to the clip's decoded video"


def cascade_with_lowres(base, top):
    """Plan and run the two-stage cascade ``base -> top`` (2 steps each, no augmentation at the top) for one
    video; returns (plan, low, high, the ``cond.lowres`` of every call of the top stage's model)."""
    plan = plan_cascade([base, top])
    seen = []
    top.model.register_forward_pre_hook(lambda m, args: seen.append(args[2].lowres))
    low, high = run_cascade([base, top], 1, keep=True, progress=False,
                            settings=[StageSettings(steps=2), StageSettings(steps=2, aug=0.0)])
    return plan, low, high, seen


def test_a_latent_base_hands_a_pixel_walt_sr_stage_its_decoded_video(ae_ckpt, tmp_path):
    base = build_system(load_config(None, latent_overrides(tmp_path / "base", ae_ckpt)))  # 5 frames of 16^2
    ssr = build_system(load_config(None, latent_overrides(tmp_path / "ssr", ae_ckpt, **{
        "model.space": "pixel", "model.autoencoder": "null", "model.walt.in_channels": 3,
        "model.walt.extra_in_channels": 3, "data.size": 32, "sr.spatial_factor": 2})))
    plan, low, high, seen = cascade_with_lowres(base, ssr)
    assert plan[0].makes == (3, 5, 16) == plan[1].takes, "the base makes decoded 3-channel pixels, not latents"
    assert low.shape == (1, 3, 5, 16, 16) and high.shape == (1, 3, 5, 32, 32)
    assert torch.equal(seen[0], low), "the SR stage reads the base's decoded output"
