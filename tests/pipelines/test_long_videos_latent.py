"""Video LDM long videos (Blattmann et al. 2023, sections 3.1.2 and 3.2): context counted in latent
frames, the video_ldm prediction model starting as the plain video model, `kinema extend` on a latent
model (trained, saved, extended through the CLI; known frames = encode -> decode of the input), the
key-frame context pattern of interpolation models and `kinema interpolate` for pixel and latent models,
and the refusals (a temporally compressing autoencoder, a model not trained for interpolation)."""

from types import SimpleNamespace

import pytest
import torch

from ldm_helpers import save_image_model
from model_helpers import randomize
from test_autoencoder_training import ae_overrides
from kinema import checkpoint as ckpt_io
from kinema.cli import main
from kinema.conditioning import Conditioning, with_context
from kinema.config import load_config, to_yaml
from kinema.data.io import read_video, write_video
from kinema.diffusion.context import ContextConfig, add_context, check_context_config, key_frame_mask
from kinema.models.temporal import VideoLDM, VideoLDMConfig
from kinema.pipelines.extend import extend_video, require_framewise
from kinema.pipelines.interpolate import interpolate_video, interpolation_windows
from kinema.system import build_system, load_system
from kinema.train.loop import Trainer

TINY_LDM = {"model.name": "video_ldm", "model.video_ldm.head_dim": 8, "model.video_ldm.norm_groups": 4,
            "model.video_ldm.conv_kernel": "3x1x1"}


def frames_seen(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[2]))
    return seen


@pytest.fixture(scope="module")
def latent_parts(tmp_path_factory):
    """A frame-wise autoencoder checkpoint (causal_ae with temporal_factor 1, 16^2 -> 4 x 8^2 latents) and a
    4-channel image model on 8^2 latents (random weights: a fresh unet3d outputs exactly 0)."""
    root = tmp_path_factory.mktemp("ldm")
    cfg = load_config(None, ae_overrides(root / "ae", **{"model.causal_ae.temporal_factor": 1,
                                                         "model.causal_ae.spatial_factor": 2}))
    torch.manual_seed(0)
    ae = build_system(cfg)
    ae_ckpt = ckpt_io.save_checkpoint(root / "ae", 0, model_state=ae.model.state_dict(), ema_state=None,
                                      trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=ae.manifest())
    image = save_image_model(root / "image", std=0.05, **{"model.unet.in_channels": 4, "data.size": 8})
    return ae_ckpt, image


def latent_ldm(out_dir, parts, **extra) -> list[str]:
    ae, image = parts
    base = {**TINY_LDM, "model.space": "latent", "model.autoencoder": str(ae), "model.video_ldm.base_path": str(image),
            "model.video_ldm.extra_in_channels": 5, "data.num_frames": 4, "data.size": 16,
            "train.out_dir": str(out_dir), "train.batch_size": 2, "train.steps": 2, "train.warmup_steps": 1,
            "train.log_every": 1, "train.ckpt_every": 2, "train.sample_every": 0, "train.progress": False,
            "train.tensorboard": False, "sample.steps": 2, "sample.sampler": "ddim"}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ---- the context pattern of interpolation models ----------------------------------------------------


def test_key_frames_are_every_kth_frame_and_the_loss_skips_them():
    assert key_frame_mask(9, 4).tolist() == [True, False, False, False, True, False, False, False, True]
    x = torch.randn(6, 2, 9, 4, 4)
    cfg = ContextConfig(key_every=4, none_prob=0.5)
    u = torch.tensor([0.1, 0.9, 0.6, 0.2, 0.5, 0.7])
    cond, weight = add_context(x, Conditioning(), cfg, rand=lambda n: u)
    keys = key_frame_mask(9, 4)
    for i in range(6):
        expect = keys if u[i] >= 0.5 else torch.zeros(9, dtype=torch.bool)  # none_prob share: no known frame
        assert torch.equal(cond.context_mask[i], expect)
        assert torch.equal(weight[i], (~expect).float())
    assert torch.equal(cond.context[1][:, keys], x[1][:, keys]) and not cond.context[1][:, ~keys].any()


def test_context_config_refusals():
    with pytest.raises(ValueError, match="key_every must be 0 .* or >= 2"):
        ContextConfig(key_every=1)
    with pytest.raises(ValueError, match="both set; set one of them to 0"):
        ContextConfig(key_every=4, max_frames=2)
    with pytest.raises(ValueError, match=r"data.num_frames = 1 \+ 4 m .* got 8; use 5 or 9"):
        check_context_config(ContextConfig(key_every=4), 8, 3, 4)
    with pytest.raises(ValueError, match="model.video_ldm.extra_in_channels"):
        check_context_config(ContextConfig(key_every=4), 9, 3, 0)
    with pytest.raises(ValueError, match="data.image_fraction=0"):
        add_context(torch.zeros(1, 1, 5, 2, 2), Conditioning(frame_segments=torch.zeros(1, 5, dtype=torch.long)),
                    ContextConfig(key_every=4))


# ---- the video_ldm prediction model -----------------------------------------------------------------


def test_fresh_prediction_model_is_the_plain_video_model(tmp_path):
    """Zero-initialized context inputs: with trained (here: random) temporal layers loaded, the prediction
    model's output equals the plain video model's bitwise, whatever the context; once its context inputs
    have weights, known frames change the output and unknown frames' context values do not."""
    image = save_image_model(tmp_path, std=0.05)
    common = dict(base_path=str(image), head_dim=8, norm_groups=4)
    plain = VideoLDM(VideoLDMConfig(**common)).eval()
    randomize(plain.temporal, seed=1)
    model = VideoLDM(VideoLDMConfig(**common, extra_in_channels=4)).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(".context.out." in k for k in missing)
    assert model.spec.extra_in_channels == 4 and "context" in model.spec.reads
    g = torch.Generator().manual_seed(0)
    z, frames = torch.randn(2, 3, 4, 16, 16, generator=g), torch.randn(2, 3, 4, 16, 16, generator=g)
    known = torch.tensor([[True, True, False, False], [True, False, False, False]])
    with torch.no_grad():
        expect = plain(z, torch.zeros(2), None)
        assert torch.equal(model(z, torch.zeros(2), with_context(None, frames, known)), expect)
        for mixer in model.temporal:
            torch.nn.init.normal_(mixer.context.out.weight, std=0.1)
        out = model(z, torch.zeros(2), with_context(None, frames, known))
        other = frames.clone()
        other[:, :, 2:] += 1.0  # unknown frames: masked out
        assert torch.equal(model(z, torch.zeros(2), with_context(None, other, known)), out)
        other[:, :, 0] += 1.0  # a known frame
        assert (model(z, torch.zeros(2), with_context(None, other, known)) - out).abs().max() > 1e-4


def test_context_counts_latent_frames_and_trains(latent_parts, tmp_path):
    with pytest.raises(ValueError, match="the latent frames of data.num_frames=4"):
        build_system(load_config(None, latent_ldm(tmp_path, latent_parts, **{"train.context.max_frames": 4})))
    cfg = load_config(None, latent_ldm(tmp_path / "run", latent_parts, **{"train.context.max_frames": 2,
                                                                          "train.context.none_prob": 0.3}))
    summary = Trainer(cfg).fit()
    assert summary["final_step"] == 2
    system, _ = load_system(tmp_path / "run", device="cpu")
    assert system.space.name == "latent" and system.is_context_model
    assert any(k.endswith("context.out.weight") for k in system.model.state_dict())


# ---- extend on a latent model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def latent_prediction(latent_parts, tmp_path_factory):
    """A latent video_ldm prediction model (0-2 context latent frames) saved as a checkpoint, with random
    temporal and context weights (so the known frames matter)."""
    run = tmp_path_factory.mktemp("pred") / "run"
    cfg = load_config(None, latent_ldm(run, latent_parts, **{"train.context.max_frames": 2}))
    system = build_system(cfg)
    randomize(system.model.temporal, seed=3)
    return ckpt_io.save_checkpoint(run, 0, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=system.manifest())


def test_extend_a_latent_model_keeps_the_encoded_input(latent_prediction):
    system, _ = load_system(latent_prediction, device="cpu")
    seen = frames_seen(system.model)
    clip = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = extend_video(system, clip, 7, overlap=2, steps=2, progress=False)
    assert out.shape == (1, 3, 7, 16, 16) and torch.isfinite(out).all()
    assert set(seen) == {4} and len(seen) == 2 * 2  # 4-latent-frame windows: 2 windows x 2 steps
    reconstruction = system.space.decode(system.space.encode(clip))
    torch.testing.assert_close(out[:, :, :3], reconstruction, rtol=0, atol=1e-6)
    assert (out[:, :, 3:] - reconstruction[:, :, -1:]).abs().max() > 1e-3  # new frames, not copies
    seen.clear()  # a 6-frame window: the default overlap is min(6 // 2, max_frames = 2) = 2 -> 2 windows
    assert extend_video(system, clip, 9, window=6, steps=1, progress=False).shape[2] == 9 and seen == [6, 6]


def test_extend_cli_on_a_latent_model(latent_prediction, tmp_path):
    clip = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    src = write_video(tmp_path / "in.gif", clip, fps=4)
    rc = main(["extend", str(latent_prediction), "--input", str(src), "--frames", "6", "--overlap", "2", "--steps",
               "2", "--guidance", "1", "--out", str(tmp_path / "out.gif"), "--device", "cpu"])
    assert rc == 0 and read_video(tmp_path / "out.gif").shape[0] == 6


def test_a_temporally_compressing_autoencoder_is_refused():
    system = SimpleNamespace(space=SimpleNamespace(temporal_factor=4), cfg=SimpleNamespace(
        model=SimpleNamespace(autoencoder="runs/causal_ae")))
    with pytest.raises(ValueError, match="extend needs a model in pixels or on a frame-wise autoencoder .*"
                                         "temporal_factor 4.*temporal_factor=1"):
        require_framewise(system, "extend")


# ---- interpolation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("keys,m,expect", [(2, 2, [(0, 1)]), (3, 2, [(0, 2)]), (5, 2, [(0, 2), (2, 2)]),
                                           (6, 2, [(0, 2), (2, 2), (3, 1)]), (4, 1, [(0, 1), (1, 1), (2, 1)])])
def test_interpolation_windows_cover_every_interval_once(keys, m, expect):
    windows = interpolation_windows(keys, m)
    assert windows == expect
    assert sum(new for _, new in windows) == keys - 1


def test_interpolate_a_pixel_model_puts_the_input_at_every_kth_frame(tiny):
    cfg = tiny(**{"model.unet.extra_in_channels": 4, "train.context.key_every": 2, "data.num_frames": 5})
    torch.manual_seed(0)
    system = build_system(cfg)
    randomize(system.model, seed=2).eval()
    seen = frames_seen(system.model)
    keys = torch.rand(1, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = interpolate_video(system, keys, steps=2, progress=False)
    assert out.shape == (1, 3, 7, 16, 16) and torch.isfinite(out).all()  # 1 + 2 (4 - 1)
    assert torch.equal(out[:, :, ::2], keys)
    assert seen == [5] * 2 + [5] * 2  # two windows (the second shifted back to end at the last key frame)
    seen.clear()
    assert interpolate_video(system, keys[:, :, :2], steps=1, progress=False).shape[2] == 3 and seen == [3]


def test_interpolate_a_latent_model_and_the_cli(latent_parts, tmp_path):
    run = tmp_path / "interp"
    cfg = load_config(None, latent_ldm(run, latent_parts, **{"train.context.key_every": 4, "data.num_frames": 5}))
    system = build_system(cfg)
    randomize(system.model.temporal, seed=4)
    ckpt = ckpt_io.save_checkpoint(run, 0, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=system.manifest())
    system, _ = load_system(ckpt, device="cpu")
    keys = torch.rand(1, 3, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = interpolate_video(system, keys, steps=2, guidance=1.0, progress=False)
    assert out.shape == (1, 3, 9, 16, 16)  # T key frames -> 4T - 3
    torch.testing.assert_close(out[:, :, ::4], system.space.decode(system.space.encode(keys)), rtol=0, atol=1e-6)
    src = write_video(tmp_path / "keys.gif", keys, fps=2)
    rc = main(["interpolate", str(ckpt), "--input", str(src), "--steps", "1", "--out", str(tmp_path / "out.gif"),
               "--device", "cpu"])
    assert rc == 0 and read_video(tmp_path / "out.gif").shape[0] == 9


def test_interpolate_refuses_other_models_and_extend_refuses_an_interpolation_model(tiny, tmp_path, capsys):
    prediction = build_system(tiny(**{"model.unet.extra_in_channels": 4, "train.context.max_frames": 2}))
    with pytest.raises(ValueError, match="not trained for interpolation .*prediction model.*key_every=4"):
        interpolate_video(prediction, torch.zeros(1, 3, 3, 16, 16), steps=1, progress=False)
    with pytest.raises(ValueError, match="not trained for interpolation \\(not a context model\\)"):
        interpolate_video(build_system(tiny()), torch.zeros(1, 3, 3, 16, 16), steps=1, progress=False)
    interp = build_system(tiny(**{"model.unet.extra_in_channels": 4, "train.context.key_every": 2,
                                  "data.num_frames": 5}))
    with pytest.raises(ValueError, match="trained for interpolation .*use `kinema interpolate`"):
        extend_video(interp, torch.zeros(1, 3, 3, 16, 16), 6, method="context", overlap=2, steps=1, progress=False)
    cfg = tiny()
    system = build_system(cfg)
    ckpt = ckpt_io.save_checkpoint(tmp_path / "u", 0, model_state=system.model.state_dict(), ema_state=None,
                                   trainer_state={"step": 0}, config_yaml=to_yaml(cfg), parts=system.manifest())
    assert main(["interpolate", str(ckpt), "--input", "missing.gif", "--out", str(tmp_path / "o.gif")]) == 2
    assert "not trained for interpolation" in capsys.readouterr().err
