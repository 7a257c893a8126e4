"""Joint image-video training in the shared latent space (W.A.L.T section 3.1 / VDM section 3): pixel
``frame_segments`` map to latent ones (clip 1 + 4k -> 1 + k frames, each image -> 1 frame with its own
id); each segment is encoded on its own; perturbing an appended image changes no other latent frame
and, through a tiny W.A.L.T, no other frame's output; `kinema train` runs joint batches on latents."""

import pytest
import torch

from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.conditioning import Conditioning
from kinema.config import load_config
from kinema.data.joint import frame_segments, image_count
from kinema.data.loader import collate
from kinema.models.autoencoder import CausalAE, CausalAEConfig, latent_frame_segments
from kinema.models.walt import WALT, WALTConfig
from kinema.spaces import LatentSpace, PixelSpace
from kinema.system import build_model, build_system
from kinema.train.loop import Trainer
from test_autoencoder_training import TINY_AE
from test_latent_space import ae_ckpt, latent_overrides  # noqa: F401  (ae_ckpt: a module fixture)


def rows(segments: list[int], batch: int = 2) -> torch.Tensor:
    return torch.tensor([segments] * batch)


@pytest.mark.parametrize("clip,images,factor,expected", [
    (9, 2, 4, [0, 0, 0, 1, 2]),
    (17, 3, 4, [0] * 5 + [1, 2, 3]),  # W.A.L.T's 17 frames -> 5 latent frames, then the images
    (5, 0, 4, [0, 0]),
    (1, 2, 4, [0, 1, 2]),  # a 1-frame "clip" is an image too
    (5, 1, 2, [0, 0, 0, 1]),
    (3, 2, 1, [0, 0, 0, 1, 2]),  # temporal factor 1: frame-wise
])
def test_latent_frame_segments_shapes_and_ids(clip, images, factor, expected):
    pixel = frame_segments(clip, images)[None].expand(3, -1)  # [3, F + K]
    latent = latent_frame_segments(pixel, factor)
    assert latent.dtype == torch.long and latent.shape == (3, len(expected))
    assert latent.tolist() == [expected] * 3


def test_latent_frame_segments_keeps_any_ids_and_errors_name_the_segment():
    assert latent_frame_segments(rows([7] * 5 + [3, 9]), 4).tolist() == [[7, 7, 3, 9]] * 2
    with pytest.raises(ValueError, match=r"frames 0\.\.7 \(id 0\).*frames=8 is not 1 \+ 4k: trim to 5 or pad to 9"):
        latent_frame_segments(rows([0] * 8 + [1]), 4)
    with pytest.raises(ValueError, match="same frame_segments layout for every item"):
        latent_frame_segments(torch.tensor([[0] * 5 + [1], [0] * 4 + [1, 2]]), 4)
    with pytest.raises(ValueError, match=r"frame_segments must be \[B, F\]"):
        latent_frame_segments(torch.zeros(6, dtype=torch.long), 4)


def tiny_latent_path(seed: int = 0):
    """A random tiny causal AE (factors 4 / 4, 4 latent channels), its latent space for 5 x 16^2 clips and a
    tiny W.A.L.T on it with every weight random (zero-init gates would make the output trivially 0)."""
    torch.manual_seed(seed)
    ae = CausalAE(CausalAEConfig(in_channels=3, chunk_frames=0, **TINY_AE)).eval()
    walt = WALT(WALTConfig(in_channels=4, hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(0, 0, 0),
                           max_frames=8)).eval()
    with torch.no_grad():
        for p in walt.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return LatentSpace(ae, frames=5, size=16, spec=walt.spec), walt


def test_joint_encode_is_segment_by_segment():
    space, _ = tiny_latent_path()
    x = torch.rand(2, 3, 7, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # 5-frame clip + 2 images
    seg = rows(frame_segments(5, 2).tolist())
    z = space.encode(x, seg)
    assert z.shape == (2, 4, 4, 4, 4) and space.latent_segments(seg).tolist() == [[0, 0, 1, 2]] * 2
    torch.testing.assert_close(z[:, :, :2], space.encode(x[:, :, :5]))  # the clip alone
    torch.testing.assert_close(z[:, :, 2:3], space.encode(x[:, :, 5:6]))  # each image alone (1 latent frame)
    torch.testing.assert_close(z[:, :, 3:4], space.encode(x[:, :, 6:7]))
    with pytest.raises(ValueError, match=r"frames 0\.\.5 \(id 0\).*frames=6 is not 1 \+ 4k"):
        space.encode(torch.zeros(2, 3, 7, 16, 16), rows([0] * 6 + [1]))  # before any compute
    assert space.latent_segments(None) is None
    pixel = PixelSpace(3, 5, 16)
    assert pixel.latent_segments(seg) is seg and pixel.encode(x, seg) is x
    with pytest.raises(ValueError, match=r"frame_segments must be \[B, F\] = \[2, 7\], got \[2, 6\]"):
        pixel.encode(x, seg[:, :6])


@pytest.mark.parametrize("frame,latent", [(5, 2), (6, 3)])
def test_perturbing_an_appended_image_changes_only_its_latent_frame_and_output(frame, latent):
    """The mask test through the whole latent path: pixel image -> its own latent frame -> W.A.L.T's
    windows (full spatiotemporal windows here: every frame shares a window) -> only its own output frame."""
    space, walt = tiny_latent_path()
    x = torch.rand(2, 3, 7, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    seg = rows(frame_segments(5, 2).tolist())
    y = x.clone()
    y[:, :, frame] = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
    za, zb = space.encode(x, seg), space.encode(y, seg)
    others = [i for i in range(za.shape[2]) if i != latent]
    assert not torch.allclose(za[:, :, latent], zb[:, :, latent])
    torch.testing.assert_close(za[:, :, others], zb[:, :, others], rtol=0, atol=0)
    cond = Conditioning(frame_segments=space.latent_segments(seg))
    logsnr = torch.tensor([0.5, -1.0])
    with torch.no_grad():
        oa, ob = walt(za, logsnr, cond), walt(zb, logsnr, cond)
        unmasked = walt(za, logsnr, None), walt(zb, logsnr, None)
    assert not torch.allclose(oa[:, :, latent], ob[:, :, latent])
    torch.testing.assert_close(oa[:, :, others], ob[:, :, others], rtol=0, atol=1e-6)
    assert not torch.allclose(unmasked[0][:, :, others], unmasked[1][:, :, others])  # the segments are what holds


def test_joint_items_must_fit_the_backbone_before_compute(ae_ckpt, tmp_path):  # noqa: F811
    # 5 frames -> 2 latent frames, + 1 image (image_fraction 0.2 of 5 frames) = 3: not a multiple of 2
    extra = {"data.image_fraction": 0.2, "model.walt.spatiotemporal_window": "[2, 0, 0]"}
    with pytest.raises(ValueError, match=r"appends 1 images \(1 latent frame each\) to the 2 latent frames of each "
                                         r"5-frame clip.*multiple of 2.*has 3 \(trim to 2 or pad to 4\)"):
        build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt, **extra)))
    space = build_system(load_config(None, latent_overrides(tmp_path, ae_ckpt, **{"data.image_fraction": 0.5}))).space
    assert space.shape() == (4, 2, 4, 4)  # sampling shapes stay the clip's


@pytest.mark.slow
def test_trainer_passes_latent_segments_to_the_backbone(ae_ckpt, tmp_path):  # noqa: F811
    trainer = Trainer(load_config(None, latent_overrides(tmp_path / "run", ae_ckpt, **{"data.image_fraction": 0.3})))
    seen = []
    trainer.model.register_forward_hook(lambda m, args, out: seen.append((args[0].shape, args[2].frame_segments)))
    batch = collate([trainer.dataset[i] for i in range(2)])
    assert batch["video"].shape[2] == 7 and batch["frame_segments"].tolist() == [[0] * 5 + [1, 2]] * 2
    loss = trainer.loss(batch)
    assert torch.isfinite(loss)
    (shape, segments), = seen
    assert shape == (2, 4, 4, 4, 4) and segments.tolist() == [[0, 0, 1, 2]] * 2


@pytest.mark.slow
def test_kinema_train_walt_jointly_on_latents(ae_ckpt, tmp_path):  # noqa: F811
    run = tmp_path / "walt"
    overrides = latent_overrides(run, ae_ckpt, **{"data.image_fraction": 0.3, "train.steps": 3,
                                                 "train.ckpt_every": 3})
    assert main(["train", "walt_bouncing_shapes", *overrides]) == 0
    ckpt = ckpt_io.resolve_checkpoint(run)
    assert ckpt.name == "step-00000003" and (ckpt / "model.safetensors").exists()


def test_ucf101_presets_build_at_full_size_on_the_meta_device():
    ae_cfg, walt_cfg = load_config("causal_ae_ucf101"), load_config("walt_ucf101")
    assert (ae_cfg.data.num_frames, ae_cfg.data.size) == (walt_cfg.data.num_frames, walt_cfg.data.size) == (17, 128)
    assert ae_cfg.data.dataset == walt_cfg.data.dataset == "folder"
    with torch.device("meta"):
        ae, walt = build_model(ae_cfg), build_model(walt_cfg)
    assert ae.latent_shape(17, 128, 128) == (8, 5, 16, 16) and ae.latent_channels == walt.cfg.in_channels
    num_images = image_count(17, walt_cfg.data.image_fraction)
    walt.spec.check_video_shape(5 + num_images, 16, 16)  # a joint latent item fits the windows
    assert 5 + num_images <= walt.cfg.max_frames
    assert sum(p.numel() for p in walt.parameters()) > 300e6  # hidden 1024 x 24 blocks


def test_walt_ucf101_builds_and_steps_with_tiny_widths(tmp_path):
    """The presets' shapes (17 x 128^2 -> 5 x 16^2 x 8, joint items of 5 + 4 latent frames) with tiny widths:
    a fresh autoencoder checkpoint of causal_ae_ucf101, then walt_ucf101's system on it and one joint loss."""
    tiny_ae = ["model.causal_ae.width=4", "model.causal_ae.num_res_blocks=1", "model.causal_ae.norm_groups=2",
               "data.dataset=bouncing_shapes", "train.batch_size=1", "data.num_workers=0",
               f"train.out_dir={tmp_path / 'ae'}", "train.progress=false", "train.tensorboard=false"]
    ae_ckpt = Trainer(load_config("causal_ae_ucf101", tiny_ae)).save()
    tiny_walt = ["model.walt.hidden_dim=16", "model.walt.depth=2", "model.walt.heads=2", "model.walt.adaln_lora_rank=4",
                 f"model.autoencoder={ae_ckpt}", "data.dataset=bouncing_shapes", "train.batch_size=1",
                 "data.num_workers=0", f"train.out_dir={tmp_path / 'walt'}", "train.progress=false",
                 "train.tensorboard=false"]
    trainer = Trainer(load_config("walt_ucf101", tiny_walt))
    assert trainer.system.space.shape() == (8, 5, 16, 16)
    seen = []
    trainer.model.register_forward_hook(lambda m, args, out: seen.append((args[0].shape, args[2].frame_segments)))
    loss = trainer.loss(collate([trainer.dataset[0]]))
    assert torch.isfinite(loss)
    assert seen[-1][0] == (1, 8, 9, 16, 16) and seen[-1][1].tolist() == [[0] * 5 + [1, 2, 3, 4]]
