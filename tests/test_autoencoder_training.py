"""Training the causal autoencoder: the objective's loss drops on a tiny clip and draws its noise
through the injected randomness; `kinema train` runs it jointly on videos and images with
reconstruction previews and manifest checkpoints; `kinema sample` refuses an autoencoder; objective
and model kind must match; a frame-wise autoencoder memorises a clip and round-trips it."""

import json

import pytest
import torch

from kinema import checkpoint as ckpt_io
from kinema.autoencoding import AutoencoderLossConfig, AutoencoderObjective
from kinema.cli import main
from kinema.conditioning import Conditioning
from kinema.config import ConfigError, load_config
from kinema.diffusion.objective import LocalRandom, TrainBatch
from kinema.models.autoencoder import CausalAE, CausalAEConfig
from kinema.system import build_objective, build_system

TINY_AE = dict(latent_channels=4, width=4, num_res_blocks=1, spatial_factor=4, temporal_factor=4, norm_groups=2)


def ae_overrides(out_dir, **extra) -> list[str]:
    base = {"model.name": "causal_ae", **{f"model.causal_ae.{k}": v for k, v in TINY_AE.items()},
            "train.objective": "autoencoder", "data.num_frames": 5, "data.size": 16, "train.out_dir": str(out_dir),
            "train.batch_size": 2, "train.steps": 4, "train.warmup_steps": 1, "train.lr": 0.003,
            "train.log_every": 1, "train.ckpt_every": 2, "train.sample_every": 0, "train.progress": False,
            "train.tensorboard": False}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def objective_for(ae: CausalAE, **loss) -> AutoencoderObjective:
    return AutoencoderObjective(AutoencoderLossConfig(**loss), ae.latent_channels, ae.spatial_factor,
                                ae.temporal_factor)


def clip(size=16):
    """A 5-frame clip: a bright square moving right over a dark background."""
    x = torch.full((1, 3, 5, size, size), -0.8)
    for t in range(5):
        x[:, :, t, 2:6, t:4 + t] = 0.7
    return x


@pytest.mark.slow
def test_objective_loss_drops_on_a_tiny_clip():
    torch.manual_seed(0)
    ae = CausalAE(CausalAEConfig(**TINY_AE))
    objective = objective_for(ae, l1_weight=1.0, l2_weight=1.0, kl_weight=1e-4)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    batch = TrainBatch(clip(size=8), Conditioning(), {})
    rng = LocalRandom(torch.Generator().manual_seed(0), 1)
    losses = []
    for _ in range(40):
        loss, logs = objective({"model": ae}, batch, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) == {"loss", "l1", "l2", "kl"} and logs["kl"] >= 0
    assert sum(losses[-5:]) / 5 < 0.3 * sum(losses[:5]) / 5, losses[::10]


def test_objective_noise_comes_from_the_injected_generator():
    torch.manual_seed(0)
    ae = CausalAE(CausalAEConfig(**TINY_AE)).eval()
    objective = objective_for(ae)
    batch = TrainBatch(clip(), Conditioning(), {})
    a = objective({"model": ae}, batch, LocalRandom(torch.Generator().manual_seed(1), 1))[0]
    b = objective({"model": ae}, batch, LocalRandom(torch.Generator().manual_seed(1), 1))[0]
    c = objective({"model": ae}, batch, LocalRandom(torch.Generator().manual_seed(2), 1))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # joint items: the noise covers the video's latent frames and one per image
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 2]])
    assert objective.latent_shape(torch.zeros(1, 3, 7, 16, 16), segments) == (4, 4, 4, 4)


def test_objective_and_model_kind_must_match(tmp_path):
    with pytest.raises(ConfigError, match="train it with train.objective=autoencoder"):
        build_system(load_config(None, ae_overrides(tmp_path, **{"train.objective": "diffusion"})))
    with pytest.raises(ConfigError, match="needs an autoencoder model"):
        build_objective(load_config(None, ["train.objective=autoencoder"]))
    with pytest.raises(ConfigError, match=r"frames=8 is not 1 \+ 4k: trim to 5 or pad to 9"):
        build_system(load_config(None, ae_overrides(tmp_path, **{"data.num_frames": 8})))
    with pytest.raises(ConfigError, match="must be one of diffusion, distill, autoencoder"):
        load_config(None, ["train.objective=gan"])
    with pytest.raises(ConfigError, match="reconstruction term"):
        load_config(None, ["train.autoencoder.l1_weight=0"])


@pytest.mark.slow
def test_kinema_train_autoencoder_jointly_with_images_then_sample_refuses(tmp_path, capsys):
    run = tmp_path / "ae"
    assert main(["train", "causal_ae_bouncing_shapes", *ae_overrides(run, **{"data.image_fraction": 0.3,
                                                                            "train.sample_every": 2,
                                                                            "train.sample_num": 2})]) == 0
    ckpt = ckpt_io.resolve_checkpoint(run)
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["model"] == "causal_ae" and meta["parts"]["model"]["trainable"]
    state = ckpt_io.load_part_state(ckpt, "model")
    assert state["latent_std"].item() != 1.0  # the running latent std trained along and is saved
    assert (run / "samples" / "step-00000004.gif").stat().st_size > 0  # input | reconstruction previews
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(l == l for l in losses)
    capsys.readouterr()
    assert main(["sample", str(run), "--num", "1", "--out", str(tmp_path / "x.gif")]) != 0
    assert "is an autoencoder" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()


def test_image_autoencoder_memorises_a_clip_and_round_trips_it():
    """Issue 13: encode -> decode of kinema's frame-wise (image) KL autoencoder returns a clip it has
    memorised, through the inference paths (chunked encode / decode of the posterior mean)."""
    torch.manual_seed(0)
    ae = CausalAE(CausalAEConfig(latent_channels=4, width=8, num_res_blocks=1, spatial_factor=2, temporal_factor=1,
                                 norm_groups=2, chunk_frames=2))
    x = clip(size=8)
    objective = objective_for(ae, l1_weight=1.0, l2_weight=1.0, kl_weight=1e-6, sample_posterior=False)
    opt = torch.optim.Adam(ae.parameters(), lr=5e-3)
    rng = LocalRandom(torch.Generator().manual_seed(0), 1)
    for _ in range(150):
        loss, _ = objective({"model": ae}, TrainBatch(x, Conditioning(), {}), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        z = ae.encode(x)
        recon = ae.decode(z)
        fresh_error = (CausalAE(ae.cfg).decode(z) - x).abs().mean()
    assert z.shape == (1, 4, 5, 4, 4) and recon.shape == x.shape
    error = (recon - x).abs().mean()
    assert error < 0.05 and error < 0.1 * fresh_error, (float(error), float(fresh_error))
