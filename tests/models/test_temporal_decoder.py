"""Video LDM's temporal decoder: it starts bitwise as the image autoencoder, trains only its temporal layers
(the image encoder and decoder stay bitwise unchanged and get no gradient) with a 3D patch discriminator,
saves only what trains, refuses another base, and serves as the autoencoder of a latent space."""

import shutil

import pytest
import torch

from kinema import checkpoint as ckpt_io
from kinema.autoencoding import DISCRIMINATOR
from kinema.config import load_config, to_yaml
from kinema.models import VideoAutoencoder
from kinema.models.temporal_decoder import IMAGE_AUTOENCODER, TemporalDecoder, TemporalDecoderConfig
from kinema.system import build_system, load_autoencoder, load_system
from kinema.train.loop import Trainer

IMAGE_AE = dict(latent_channels=2, width=4, num_res_blocks=1, spatial_factor=4, temporal_factor=1, norm_groups=2)


def save_image_ae(run_dir, seed=0, **ae):
    """A fresh tiny image autoencoder (causal_ae, temporal_factor 1) saved as a kinema checkpoint."""
    overrides = {"model.name": "causal_ae", **{f"model.causal_ae.{k}": v for k, v in {**IMAGE_AE, **ae}.items()},
                 "train.objective": "autoencoder", "data.num_frames": 1, "data.size": 16, "train.out_dir": str(run_dir)}
    cfg = load_config(None, [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(seed)
    system = build_system(cfg, training=False)
    return ckpt_io.save_checkpoint(run_dir, 0, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=system.manifest())


def td_config(base, out_dir, **extra):
    base_cfg = {"model.name": "temporal_decoder", "model.temporal_decoder.base_path": str(base),
                "model.temporal_decoder.norm_groups": 2, "train.objective": "autoencoder",
                "data.dataset": "bouncing_shapes", "data.num_frames": 4, "data.size": 16,
                "train.out_dir": str(out_dir), "train.batch_size": 2, "train.steps": 3, "train.warmup_steps": 1,
                "train.lr": 0.01, "train.log_every": 1, "train.ckpt_every": 3, "train.sample_every": 0,
                "train.progress": False, "train.tensorboard": False, "train.autoencoder.disc": "3d",
                "train.autoencoder.disc_width": 4, "train.autoencoder.disc_layers": 1,
                "train.autoencoder.disc_start": 1}
    base_cfg.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base_cfg.items()])


@pytest.fixture(scope="module")
def image_ae(tmp_path_factory):
    return save_image_ae(tmp_path_factory.mktemp("image_ae"))


def test_starts_bitwise_as_the_image_autoencoder(image_ae):
    td = TemporalDecoder(TemporalDecoderConfig(base_path=str(image_ae), norm_groups=2))
    base, _ = load_system(image_ae, device="cpu")
    assert isinstance(td, VideoAutoencoder) and td.temporal_factor == 1 and len(td.temporal) > 0
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    z = base.model.encode(video)
    assert torch.equal(td.encode(video), z)
    assert torch.equal(td.decode(z), base.model.decode(z))
    assert torch.equal(td.decode(z, chunk_frames=2), base.model.decode(z))
    assert torch.equal(td(video).recon, base.model.eval()(video).recon)
    assert td.scale_factor == base.model.scale_factor and td.latent_shape(5, 16, 16) == (2, 5, 4, 4)


def test_temporal_layers_mix_frames_once_trained(image_ae):
    td = TemporalDecoder(TemporalDecoderConfig(base_path=str(image_ae), norm_groups=2))
    with torch.no_grad():
        for p in td.temporal.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    z = torch.randn(1, 2, 4, 4, 4)
    changed = z.clone()
    changed[:, :, 3] += 1.0
    a, b = td.decode(z), td.decode(changed)
    assert not torch.equal(a[:, :, 2], b[:, :, 2])  # frame 2 sees latent frame 3 through the 3D convolutions
    a, b = td.decode(z, chunk_frames=2), td.decode(changed, chunk_frames=2)  # chunks are decoded on their own
    assert torch.equal(a[:, :, :2], b[:, :, :2]) and not torch.equal(a[:, :, 2:], b[:, :, 2:])


def test_training_freezes_the_image_autoencoder_and_saves_only_temporal_layers(image_ae, tmp_path):
    trainer = Trainer(td_config(image_ae, tmp_path / "td"))
    td = trainer.model
    base_before = {k: v.clone() for k, v in td.base.state_dict().items()}
    temporal_before = {k: v.clone() for k, v in td.temporal.state_dict().items()}
    trainer.fit()
    assert all(torch.equal(v, td.base.state_dict()[k]) for k, v in base_before.items())  # encoder + decoder
    assert all(p.grad is None and not p.requires_grad for p in td.base.parameters())
    assert any(not torch.equal(v, td.temporal.state_dict()[k]) for k, v in temporal_before.items())
    assert "loss_discriminator" in trainer.history[-1]
    ckpt = ckpt_io.resolve_checkpoint(tmp_path / "td")
    manifest = ckpt_io.load_manifest(ckpt)
    assert manifest["parts"][IMAGE_AUTOENCODER]["source"] == str(image_ae.resolve())
    assert manifest["parts"][IMAGE_AUTOENCODER]["sha256"] == ckpt_io.hash_path(image_ae)
    assert DISCRIMINATOR in manifest["parts"]
    assert all(k.startswith("temporal.") for k in ckpt_io.load_part_state(ckpt, "model"))
    # the trained temporal decoder is the autoencoder of a latent space: same latents, its own decoding
    part = load_autoencoder(str(tmp_path / "td"))
    video = torch.rand(1, 3, 4, 16, 16) * 2 - 1
    assert torch.equal(part.module.encode(video), td.base.encode(video))
    z = td.base.encode(video)
    assert torch.equal(part.module.decode(z), trainer.ema_model().decode(z))  # the EMA weights, as saved
    assert not torch.equal(part.module.decode(z), td.base.decode(z))


def test_refuses_a_different_base_and_a_video_autoencoder(tmp_path):
    base = save_image_ae(tmp_path / "base", seed=0)
    cfg = td_config(base, tmp_path / "td", **{"train.steps": 1, "train.ckpt_every": 1})
    Trainer(cfg).fit()
    other = save_image_ae(tmp_path / "other", seed=1)
    shutil.rmtree(base)
    shutil.copytree(other, base)  # another image autoencoder behind the recorded path
    with pytest.raises(ValueError, match="frozen part 'image_autoencoder'.*a different image_autoencoder"):
        load_system(tmp_path / "td", device="cpu")
    video_ae = save_image_ae(tmp_path / "video_ae", temporal_factor=4)
    with pytest.raises(ValueError, match="needs an image autoencoder: model.name=causal_ae with "
                                         "model.causal_ae.temporal_factor=1"):
        TemporalDecoder(TemporalDecoderConfig(base_path=str(video_ae)))
    with pytest.raises(ValueError, match="base_path is empty"):
        TemporalDecoder(TemporalDecoderConfig())


def test_train_decoder_saves_the_decoder_but_never_the_encoder(image_ae):
    td = TemporalDecoder(TemporalDecoderConfig(base_path=str(image_ae), norm_groups=2, train_decoder=True))
    keys = set(td.state_dict())
    assert any(k.startswith("base.decoder.") for k in keys)
    assert not any(k.startswith("base.encoder.") for k in keys) and "base.latent_std" not in keys
    assert not any(p.requires_grad for p in td.base.encoder.parameters())
    assert td.last_layer_weight() is td.base.decoder.conv_out.conv.weight
    fresh = TemporalDecoder(TemporalDecoderConfig(base_path=str(image_ae), norm_groups=2, train_decoder=True))
    fresh.load_state_dict(td.state_dict())  # the base fills in what the checkpoint does not hold
