"""The diffusers AutoencoderKL adapter: a tiny random AutoencoderKL saved with save_pretrained and loaded back
through kinema (nothing is downloaded) encodes / decodes frame by frame with the right shapes, chunked equals
one pass, the scale (and shift) factor comes from its config, it is a frozen part recorded by folder and
sha256 (a changed folder is refused), and bad folders / mismatched latent channels get one clear error each."""

import json
import shutil

import pytest
import torch

from kinema import checkpoint as ckpt_io
from kinema.config import load_config, to_yaml
from kinema.models.autoencoder import VideoAutoencoder
from kinema.system import build_system, load_system
from vae_helpers import latent_unet_overrides, save_diffusers_vae

pytest.importorskip("diffusers")

from kinema.models.vae_adapter import DiffusersAutoencoder, frame_chunks, load_diffusers_vae  # noqa: E402


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_diffusers_vae(tmp_path_factory.mktemp("sd") / "vae")


def video(b=2, f=3, size=8, seed=0):
    return torch.rand(b, 3, f, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_frame_chunks_cover_every_frame_once_in_order():
    assert list(frame_chunks(2, 3, 4)) == [[(0, 0, 3), (1, 0, 1)], [(1, 1, 3)]]
    assert list(frame_chunks(2, 3, 0)) == [[(0, 0, 3), (1, 0, 3)]]
    flat = [(b, f) for chunk in frame_chunks(3, 5, 2) for b, f0, f1 in chunk for f in range(f0, f1)]
    assert flat == [(b, f) for b in range(3) for f in range(5)]
    assert all(sum(f1 - f0 for _, f0, f1 in chunk) <= 2 for chunk in frame_chunks(3, 5, 2))


def test_encode_decode_frame_by_frame_with_the_config_scale(vae_dir):
    ae = load_diffusers_vae(vae_dir, chunk_frames=2)
    assert isinstance(ae, VideoAutoencoder) and isinstance(ae, DiffusersAutoencoder)
    assert (ae.in_channels, ae.latent_channels, ae.spatial_factor, ae.temporal_factor) == (3, 4, 2, 1)
    assert ae.scale_factor == 0.5 and ae.shift_factor == 0.0  # read from config.json, not estimated
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    assert ae.latent_shape(7, 8, 8) == (4, 7, 4, 4)
    x = video()
    z = ae.encode(x)
    assert z.shape == (2, 4, 3, 4, 4)
    images = x.transpose(1, 2).reshape(6, 3, 8, 8)  # frame-wise: each frame is an image of the batch
    want = ae.vae.encode(images).latent_dist.mean.reshape(2, 3, 4, 4, 4).transpose(1, 2)
    torch.testing.assert_close(z, want, rtol=1e-4, atol=1e-5)
    out = ae.decode(z)
    assert out.shape == x.shape
    torch.testing.assert_close(out[1, :, 2], ae.vae.decode(z[1:2, :, 2]).sample[0], rtol=1e-4, atol=1e-5)


def test_chunked_equals_one_pass(vae_dir):
    ae = load_diffusers_vae(vae_dir)
    x = video(b=2, f=5)
    one = ae.encode(x, chunk_frames=0)
    for chunk in (1, 3, 4, 7):
        torch.testing.assert_close(ae.encode(x, chunk_frames=chunk), one, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ae.decode(one, chunk_frames=chunk), ae.decode(one, chunk_frames=0),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_frames must be >= 0"):
        ae.encode(x, chunk_frames=-1)
    with pytest.raises(ValueError, match=r"takes \[B, 3, F, H, W\] videos, got \(1, 1, 2, 8, 8\)"):
        ae.encode(torch.zeros(1, 1, 2, 8, 8))
    with pytest.raises(ValueError, match="height=7 is not divisible by the spatial factor 2"):
        ae.encode(torch.zeros(1, 3, 2, 7, 8))


def test_shift_factor_is_taken_out_of_the_latents(tmp_path):
    folder = save_diffusers_vae(tmp_path / "vae", shift_factor=0.25)
    ae = load_diffusers_vae(folder)
    x = video(b=1, f=2)
    z = ae.encode(x)
    images = x.transpose(1, 2).reshape(2, 3, 8, 8)
    torch.testing.assert_close(z.transpose(1, 2).reshape(2, 4, 4, 4), ae.vae.encode(images).latent_dist.mean - 0.25,
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ae.decode(z).transpose(1, 2).reshape(2, 3, 8, 8), ae.vae.decode(z.transpose(1, 2)
                               .reshape(2, 4, 4, 4) + 0.25).sample, rtol=1e-4, atol=1e-5)


def test_the_folder_is_a_frozen_part_of_a_latent_system(vae_dir, tmp_path):
    system = build_system(load_config(None, latent_unet_overrides(tmp_path, vae_dir)))
    part = system.parts["autoencoder"]
    assert isinstance(part.module, DiffusersAutoencoder) and not part.trainable
    assert part.source == str(vae_dir.resolve()) and part.sha256 == ckpt_io.hash_path(vae_dir)
    space = system.space
    assert space.shape() == (4, 2, 4, 4) and space.shape(frames=5, size=16) == (4, 5, 8, 8)
    x = video(b=2, f=2)
    torch.testing.assert_close(space.encode(x), 0.5 * part.module.encode(x))
    assert space.decode(space.encode(x)).shape == x.shape


def test_a_checkpoint_refuses_a_changed_folder(vae_dir, tmp_path):
    folder = shutil.copytree(vae_dir, tmp_path / "vae")
    cfg = load_config(None, latent_unet_overrides(tmp_path / "run", folder))
    system = build_system(cfg)
    ckpt = ckpt_io.save_checkpoint(tmp_path / "run", 1, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 1}, config_yaml=to_yaml(cfg), parts=system.manifest())
    loaded, _ = load_system(ckpt, device="cpu")
    assert isinstance(loaded.parts["autoencoder"].module, DiffusersAutoencoder)
    config = json.loads((folder / "config.json").read_text())
    config["scaling_factor"] = 0.25  # the same weights, another scale: another latent space
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="frozen part 'autoencoder'.*a different autoencoder"):
        load_system(ckpt, device="cpu")


def test_folders_that_are_not_an_autoencoder_kl_are_refused(vae_dir, tmp_path):
    from ldm_helpers import save_diffusers_unet

    def error(path):
        with pytest.raises(ValueError) as info:
            build_system(load_config(None, latent_unet_overrides(tmp_path / "run", path)))
        return str(info.value)

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    assert "is not a diffusers model folder (no config.json" in error(tmp_path / "notes")
    assert "kinema autoencoder checkpoint / run directory" in error(tmp_path / "notes")
    unet = save_diffusers_unet(tmp_path / "unet")
    assert "holds a diffusers UNet2DConditionModel, not an AutoencoderKL" in error(unet)
    pipeline = tmp_path / "sd"
    shutil.copytree(vae_dir, pipeline / "vae")
    (pipeline / "model_index.json").write_text("{}")
    want = f"is a diffusers pipeline folder; give its autoencoder: model.autoencoder={pipeline / 'vae'}"
    assert want in error(pipeline)
    pickled = shutil.copytree(vae_dir, tmp_path / "pickled")
    (pickled / "diffusion_pytorch_model.safetensors").rename(pickled / "diffusion_pytorch_model.bin")
    assert "loads safetensors weights only (it never unpickles a .bin)" in error(pickled)
    broken = shutil.copytree(vae_dir, tmp_path / "broken")
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    assert "could not load a diffusers AutoencoderKL" in error(broken)


def test_latent_channels_must_match_the_denoiser(tmp_path):
    from ldm_helpers import save_diffusers_unet

    vae8 = save_diffusers_vae(tmp_path / "vae8", latent_channels=8)
    with pytest.raises(ValueError, match="model.unet.in_channels=4 but the autoencoder .*vae8 gives 8-channel "
                                         "latents; set model.unet.in_channels=8"):
        build_system(load_config(None, latent_unet_overrides(tmp_path / "run", vae8)))
    unet = save_diffusers_unet(tmp_path / "unet")  # a diffusers UNet base on 3 channels
    overrides = [o for o in latent_unet_overrides(tmp_path / "run", vae8) if not o.startswith("model.unet")]
    overrides += ["model.name=video_ldm", "model.video_ldm.base=diffusers", f"model.video_ldm.base_path={unet}",
                  "model.video_ldm.head_dim=4", "model.video_ldm.norm_groups=4", "model.text.encoder=builtin",
                  "model.text.dim=8"]
    with pytest.raises(ValueError, match=r"the video_ldm backbone \(its pretrained base, model.video_ldm\) takes "
                                         r"3-channel inputs but the autoencoder .*vae8 gives 8-channel latents; use an "
                                         r"autoencoder with 3 latent channels"):
        build_system(load_config(None, overrides))
