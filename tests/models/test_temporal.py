"""Video LDM temporal alignment (models/temporal.py): the blend is exact at the start, temporal layers obey
frame segments, the video model equals the image model frame by frame at initialization, the base stays
frozen through training, checkpoints hold only temporal tensors and refuse another base, and a diffusers
UNet2DConditionModel (tiny, random, saved locally) runs forward and backward inside the video model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ldm_helpers import save_diffusers_unet, save_image_model
from model_helpers import randomize
from kinema.conditioning import Conditioning
from kinema.config import load_config
from kinema.models.blocks import segment_conv3d
from kinema.models.temporal import (Conv3DBlock, FrameAttention, VideoLDM, VideoLDMConfig, ddpm_alphas_cumprod,
                                    logsnr_to_timestep, mix_spatial_temporal)
from kinema.system import load_system

TINY = dict(head_dim=8, norm_groups=4)


def _z(b=2, f=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, f, size, size, generator=g), torch.tensor([1.5, -2.0])[:b]


# ---- the math -------------------------------------------------------------------------------------


def test_mix_is_exactly_the_spatial_path_at_the_start_and_for_alpha_one():
    g = torch.Generator().manual_seed(0)
    z, z_t = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    for logit in (-3.0, 0.0, 0.7, 5.0):
        assert torch.equal(mix_spatial_temporal(z, z.clone(), torch.tensor(logit)), z)  # z'' == z: z bitwise
    assert torch.equal(mix_spatial_temporal(z, z_t, torch.tensor(100.0)), z)  # alpha == 1 in float32
    alpha = torch.sigmoid(torch.tensor(0.3))
    torch.testing.assert_close(mix_spatial_temporal(z, z_t, torch.tensor(0.3)), alpha * z + (1 - alpha) * z_t)


def test_logsnr_to_timestep_inverts_the_discrete_schedule():
    abar = ddpm_alphas_cumprod(1000, 0.00085, 0.012, "scaled_linear")
    table = torch.log(abar / (1 - abar))
    steps = torch.tensor([0, 1, 17, 500, 998, 999])
    torch.testing.assert_close(logsnr_to_timestep(table[steps], abar), steps.double(), rtol=0, atol=1e-9)
    between = logsnr_to_timestep((table[10:11] + table[11:12]) / 2, abar)
    assert 10 < between.item() < 11
    assert logsnr_to_timestep(torch.tensor([50.0, -50.0]), abar).tolist() == [0.0, 999.0]  # clamped


@pytest.mark.parametrize("kernel", [3, 1])
def test_segment_conv3d_equals_the_convolution_of_each_segment_alone(kernel):
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(4, 4, (3, kernel, kernel), padding=(1, kernel // 2, kernel // 2))
    x = torch.randn(1, 4, 6, 5, 5)
    segments = torch.tensor([[0, 0, 0, 1, 2, 2]])
    out = segment_conv3d(x, conv, segments)
    for lo, hi in ((0, 3), (3, 4), (4, 6)):
        torch.testing.assert_close(out[:, :, lo:hi], conv(x[:, :, lo:hi]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(segment_conv3d(x, conv, None), conv(x))


@pytest.mark.parametrize("layer", [FrameAttention(8, 4, 4), Conv3DBlock(8, 3, 4)], ids=["attention", "conv3d"])
def test_temporal_layer_on_a_segment_equals_the_layer_on_that_segment_alone(layer):
    """Masks, zero padding and positions restart per segment: an appended clip or image is processed as if
    it were alone (so positions count from each segment's first frame)."""
    randomize(layer, seed=2)
    x = torch.randn(1, 8, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = layer(x, torch.tensor([[0, 0, 0, 1, 1]]))
        torch.testing.assert_close(out[:, :, :3], layer(x[:, :, :3]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[:, :, 3:], layer(x[:, :, 3:]), rtol=1e-5, atol=1e-5)
        assert (layer(x)[:, :, 3:] - out[:, :, 3:]).abs().max() > 1e-4  # without segments they do mix


# ---- the video model on a kinema image model ------------------------------------------------------


@pytest.fixture
def image_ckpt(tmp_path):
    return save_image_model(tmp_path / "image", std=0.2)


def test_video_model_at_init_equals_the_image_model_frame_by_frame(image_ckpt):
    model = VideoLDM(VideoLDMConfig(base_path=str(image_ckpt), **TINY)).eval()
    image = model.base.net
    z, logsnr = _z()
    with torch.no_grad():
        video = model(z, logsnr, Conditioning())
        every_frame_an_image = image(z, logsnr, Conditioning(frame_segments=torch.arange(4).expand(2, 4)))
        assert torch.equal(video, every_frame_an_image)
        for f in range(z.shape[2]):  # and each frame run alone, as the 1-frame item it was trained on
            torch.testing.assert_close(video[:, :, f:f + 1], image(z[:, :, f:f + 1], logsnr), rtol=1e-5, atol=1e-5)
        randomize(model.temporal, seed=3)  # trained temporal layers, but alpha = 1: the image model again
        assert not torch.equal(model(z, logsnr, Conditioning()), video)
        for mixer in model.temporal:
            mixer.mix_logit.fill_(100.0)
        assert torch.equal(model(z, logsnr, Conditioning()), video)


def test_only_temporal_parameters_train_and_are_saved(image_ckpt):
    model = VideoLDM(VideoLDMConfig(base_path=str(image_ckpt), **TINY))
    assert model.spatial and all(not p.requires_grad for p in model.base.parameters())
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"temporal"}
    assert all(k.startswith("temporal.") for k in model.state_dict())
    model.train()
    assert not model.base.training and model.temporal.training
    other = VideoLDM(VideoLDMConfig(base_path=str(image_ckpt), **TINY))
    randomize(other.temporal, seed=1)
    model.load_state_dict(other.state_dict())  # strict: the base's tensors are not asked for
    assert torch.equal(model.temporal[0].layer.out.weight, other.temporal[0].layer.out.weight)


def _video_cfg(tmp_path, base, **extra):
    overrides = {"model.name": "video_ldm", "model.video_ldm.base_path": str(base), "model.video_ldm.head_dim": 8,
                 "model.video_ldm.norm_groups": 4, "model.video_ldm.conv_kernel": "3x1x1", "data.num_frames": 4,
                 "data.size": 16, "train.out_dir": str(tmp_path / "video"), "train.batch_size": 2, "train.steps": 3,
                 "train.warmup_steps": 1, "train.lr": 0.01, "train.log_every": 1, "train.ckpt_every": 3,
                 "train.sample_every": 0, "train.progress": False, "train.tensorboard": False, "sample.steps": 2,
                 **extra}
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.slow
def test_freezing_is_real_and_checkpoints_refuse_another_base(tmp_path, image_ckpt):
    from kinema.train.loop import Trainer

    trainer = Trainer(_video_cfg(tmp_path, image_ckpt))
    base_before = {k: v.clone() for k, v in trainer.model.base.state_dict().items()}
    temporal_before = {k: v.clone() for k, v in trainer.model.temporal.state_dict().items()}
    trainer.fit()
    model = trainer.model
    assert all(p.grad is None for p in model.base.parameters()), "the frozen base receives no gradient"
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, base_before[k]), f"frozen weight {k} changed"
    assert any(not torch.equal(v, temporal_before[k]) for k, v in model.temporal.state_dict().items())
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in model.base.parameters()}
    assert all(k.startswith("temporal.") for k in trainer.ema.shadow)

    ckpt = tmp_path / "video" / "ckpt" / "step-00000003"
    assert all(k.startswith("temporal.") for k in load_file(ckpt / "model.safetensors"))
    part = json.loads((ckpt / "meta.json").read_text())["parts"]["image_model"]
    assert part["trainable"] is False and part["source"] == str(image_ckpt.resolve()) and len(part["sha256"]) == 64
    system, _ = load_system(ckpt, device="cpu")  # same base: loads; the EMA temporal weights are in place
    z, logsnr = _z()
    with torch.no_grad():
        torch.testing.assert_close(system.model(z, logsnr, Conditioning()),
                                   trainer.ema_model()(z, logsnr, Conditioning()))

    save_image_model(tmp_path / "image", seed=7, std=0.2)  # another image model behind the same path
    with pytest.raises(ValueError, match=r"frozen part 'image_model'.*a different image_model"):
        load_system(ckpt, device="cpu")


def test_bad_bases_are_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="base_path is empty"):
        VideoLDM(VideoLDMConfig(**TINY))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    with pytest.raises(ValueError, match="not a diffusers UNet2DConditionModel folder"):
        VideoLDM(VideoLDMConfig(base="diffusers", base_path=str(tmp_path / "notes"), **TINY))
    with pytest.raises(ValueError, match="alpha_init"):
        VideoLDMConfig(alpha_init=1.0)


# ---- the video model on a diffusers UNet2DConditionModel ------------------------------------------


def test_diffusers_unet_runs_forward_and_backward_inside_the_video_model(tmp_path):
    pytest.importorskip("diffusers")
    folder = save_diffusers_unet(tmp_path / "unet", cross_attention_dim=8)
    model = VideoLDM(VideoLDMConfig(base="diffusers", base_path=str(folder), head_dim=4, norm_groups=4))
    spec = model.spec
    assert (spec.in_channels, spec.text_dim, spec.size_multiple) == (3, 8, 2) and "text" in spec.reads
    kinds = {layer.kind for layer in model.spatial}
    assert kinds == {"conv", "attention"} and len(model.spatial) == len(model.temporal)

    z, logsnr = _z()
    g = torch.Generator().manual_seed(4)
    cond = Conditioning(text_emb=torch.randn(2, 5, 8, generator=g), text_mask=torch.ones(2, 5, dtype=torch.bool))
    with torch.no_grad():  # at init: the UNet applied to each frame (its own timestep for the log-SNR)
        t = logsnr_to_timestep(logsnr, model.base.alphas_cumprod).float()
        frames = z.transpose(1, 2).reshape(8, 3, 16, 16)
        ref = model.base.unet(frames, t.repeat_interleave(4), encoder_hidden_states=cond.text_emb.repeat_interleave(
            4, 0)).sample.reshape(2, 4, 3, 16, 16).transpose(1, 2)
        torch.testing.assert_close(model(z, logsnr, cond), ref, rtol=1e-5, atol=1e-5)

    randomize(model.temporal, seed=1)
    model.train()
    out = model(z, logsnr, cond)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    assert all(p.grad is None for p in model.base.parameters())
    missing = [n for n, p in model.temporal.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, f"no gradient reaches {missing[:3]}"
    with torch.no_grad():  # text reaches the output through the UNet's own cross-attention
        other = Conditioning(text_emb=cond.text_emb.flip(0), text_mask=cond.text_mask)
        assert (model(z, logsnr, cond) - model(z, logsnr, other)).abs().max() > 1e-5
        cond.frame_segments = torch.tensor([[0, 0, 1, 2]] * 2)  # a 2-frame clip and two images
        z2 = z.clone()
        z2[:, :, 2] += 1.0
        a, b = model(z, logsnr, cond), model(z2, logsnr, cond)
        assert torch.equal(a[:, :, [0, 1, 3]], b[:, :, [0, 1, 3]]), "no information crosses segments"
        assert (a[:, :, 2] - b[:, :, 2]).abs().max() > 1e-4


def test_a_diffusers_base_is_a_frozen_part_of_a_text_conditioned_system(tmp_path):
    pytest.importorskip("diffusers")
    from kinema import checkpoint as ckpt_io
    from kinema.system import build_system, named_trainable_parameters

    folder = save_diffusers_unet(tmp_path / "unet", cross_attention_dim=8)
    cfg = _video_cfg(tmp_path, folder, **{"model.video_ldm.base": "diffusers", "model.video_ldm.head_dim": 4,
                                          "model.text.encoder": "builtin", "model.text.dim": 8,
                                          "model.text.heads": 2})
    system = build_system(cfg)
    with pytest.raises(ValueError, match="takes 8-dim text but the builtin text encoder gives 16-dim"):
        build_system(_video_cfg(tmp_path, folder, **{"model.video_ldm.base": "diffusers",
                                                      "model.text.encoder": "builtin", "model.text.dim": 16}))
    part = system.manifest()["image_model"]
    assert part == {"trainable": False, "source": str(folder.resolve()), "sha256": ckpt_io.hash_path(folder)}
    trained = [name for name, _ in named_trainable_parameters(system.model)]
    assert {n.split(".")[0] if n.startswith("text_encoder.") else n[:len("net.temporal")] for n in trained} == {
        "net.temporal", "text_encoder"}  # the temporal layers and the built-in text encoder, never the UNet
    z, logsnr = _z()
    text_emb, text_mask = system.encode_text(["a red circle", "a blue square"])
    out = system.model(z, logsnr, Conditioning(text_emb=text_emb, text_mask=text_mask))
    assert out.shape == z.shape and torch.isfinite(out).all()
