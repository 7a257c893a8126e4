"""Several trainable parts, each with its own optimizer: an image autoencoder (``model``) trained against a
patch discriminator (``discriminator``). Each loss reaches only its own part; the discriminator waits for
``disc_start``; checkpoints hold both parts and both optimizers, and resume is bitwise exact."""

import pytest
import torch

from kinema import checkpoint as ckpt_io
from kinema.autoencoding import DISCRIMINATOR, AutoencoderLossConfig, adaptive_weight
from kinema.config import ConfigError, load_config
from kinema.data.loader import collate
from kinema.system import MODEL, build_system
from kinema.train.loop import Trainer

IMAGE_AE = dict(latent_channels=2, width=4, num_res_blocks=1, spatial_factor=4, temporal_factor=1, norm_groups=2)


def gan_config(out_dir, **extra):
    base = {"model.name": "causal_ae", **{f"model.causal_ae.{k}": v for k, v in IMAGE_AE.items()},
            "train.objective": "autoencoder", "data.dataset": "bouncing_shapes", "data.num_frames": 2,
            "data.size": 16, "train.out_dir": str(out_dir), "train.batch_size": 2, "train.steps": 4,
            "train.warmup_steps": 1, "train.lr": 0.003, "train.log_every": 1, "train.ckpt_every": 2,
            "train.sample_every": 0, "train.progress": False, "train.tensorboard": False,
            "train.autoencoder.disc": "2d", "train.autoencoder.disc_width": 4, "train.autoencoder.disc_layers": 1,
            "train.autoencoder.disc_start": 1, "train.autoencoder.disc_lr": 0.01}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_each_loss_reaches_only_its_own_part(tmp_path):
    trainer = Trainer(gan_config(tmp_path / "run"))
    trainer.step = 1  # past disc_start: both losses
    disc = trainer.parts[DISCRIMINATOR].module
    batch = collate([trainer.dataset[0], trainer.dataset[1]])
    losses = trainer.part_losses(batch)
    assert set(losses) == {MODEL, DISCRIMINATOR}
    model_params = [p for p in trainer.model.parameters() if p.requires_grad]
    want_g = torch.autograd.grad(losses[MODEL], model_params, retain_graph=True)
    want_d = torch.autograd.grad(losses[DISCRIMINATOR], list(disc.parameters()), retain_graph=True)
    trainer._backward(losses)
    for p, g in zip(model_params, want_g):
        assert torch.equal(p.grad, g)  # L_G alone, nothing of L_D
    for p, g in zip(disc.parameters(), want_d):
        assert torch.equal(p.grad, g)  # L_D alone: the generator's adversarial term does not train D
    assert any(g.abs().sum() > 0 for g in want_g) and any(g.abs().sum() > 0 for g in want_d)


def test_discriminator_waits_for_disc_start_then_trains(tmp_path):
    trainer = Trainer(gan_config(tmp_path / "run", **{"train.autoencoder.disc_start": 2}))
    disc = trainer.parts[DISCRIMINATOR].module
    before = params(disc)
    stream = trainer.batches()
    first = trainer.train_step([next(stream)])
    assert first.part_losses == {}  # step 0: the plain autoencoder loss, the discriminator untouched
    trainer.train_step([next(stream)])
    assert all(torch.equal(v, dict(disc.named_parameters())[k]) for k, v in before.items())
    third = trainer.train_step([next(stream)])
    assert set(third.part_losses) == {DISCRIMINATOR}
    assert any(not torch.equal(v, dict(disc.named_parameters())[k]) for k, v in before.items())
    assert trainer.optimizers[DISCRIMINATOR].param_groups[0]["lr"] == pytest.approx(0.01)  # its own lr
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.003)


def test_checkpoint_holds_both_parts_and_resume_is_bitwise_exact(tmp_path):
    full = Trainer(gan_config(tmp_path / "a"))
    full.fit()
    half = Trainer(gan_config(tmp_path / "b", **{"train.steps": 2}))
    half.fit()
    ckpt = ckpt_io.resolve_checkpoint(tmp_path / "b")
    manifest = ckpt_io.load_manifest(ckpt)
    assert manifest["parts"][DISCRIMINATOR] == {"trainable": True, "weights": "discriminator.safetensors"}
    assert "part_optimizers" in ckpt_io.load_trainer_state(ckpt)
    resumed = Trainer(gan_config(tmp_path / "b"), resume=True)
    assert resumed.step == 2
    resumed.fit()
    a, b = {r["step"]: r for r in full.history}, {r["step"]: r for r in resumed.history}
    for step in (3, 4):
        assert b[step]["loss"] == a[step]["loss"] and b[step]["loss_discriminator"] == a[step]["loss_discriminator"]
    for mine, theirs in ((full.model, resumed.model), (full.parts[DISCRIMINATOR].module,
                                                        resumed.parts[DISCRIMINATOR].module)):
        for k, v in mine.state_dict().items():
            assert torch.equal(theirs.state_dict()[k], v), k
    for k, v in full.ema.state_dict(full=True).items():
        assert torch.equal(resumed.ema.state_dict(full=True)[k], v), k
    # sampling-side loading takes the model alone (the discriminator is training-only)
    system = build_system(gan_config(tmp_path / "c"), training=False)
    assert DISCRIMINATOR not in system.parts


def test_no_discriminator_means_one_part(tmp_path):
    system = build_system(gan_config(tmp_path / "run", **{"train.autoencoder.disc": "none"}))
    assert set(system.trainable()) == {MODEL}
    with pytest.raises(ConfigError, match="disc_layers=3 halves data.size=16 too often"):
        build_system(gan_config(tmp_path / "run", **{"train.autoencoder.disc_layers": 3}))
    with pytest.raises(ConfigError, match="train.autoencoder.disc. must be one of none, 2d, 3d"):
        gan_config(tmp_path / "run", **{"train.autoencoder.disc": "4d"})
    with pytest.raises(ValueError, match="disc_lr must be > 0"):
        AutoencoderLossConfig(disc_lr=0.0)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    """VQGAN eq. 7: lambda = |grad L_rec| / (|grad L_GAN| + delta) at the last layer."""
    w = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    a = torch.tensor([3.0, 4.0, 0.0])
    rec, gan = (w * a).sum(), (2.0 * w * a).sum() + w.square().sum() * 0  # grads a and 2a
    lam = adaptive_weight(rec, gan, w, delta=0.0)
    assert lam.item() == pytest.approx(0.5) and not lam.requires_grad
    huge = adaptive_weight((w * a).sum(), (w * 0.0).sum(), w)  # no GAN gradient: clamped, not inf
    assert huge.item() == pytest.approx(1e4)
