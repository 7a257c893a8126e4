"""Long videos (temporal extension), super-resolution by reconstruction guidance, context models."""

import math

import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.diffusion.context import ContextConfig, add_context, check_context_config, sample_context_mask
from kinema.diffusion.guidance import reconstruction_guidance, frame_selection
from kinema.diffusion.objective import Denoiser
from kinema.pipelines.extend import conditional_denoiser, extend_video, window_plan
from kinema.pipelines.upsample import upsample_video
from kinema.system import build_system


def eval_system(cfg):
    system = build_system(cfg)
    system.model.eval()
    return system, system.model

CONTEXT = {"model.unet.extra_in_channels": 4, "train.context.max_frames": 2}


def frames_seen(model):
    """Record the number of frames of every model call."""
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[2]))
    return seen


@pytest.mark.parametrize("have,total,window,overlap", [(3, 9, 4, 2), (16, 64, 8, 4), (4, 5, 4, 3), (2, 40, 8, 1)])
def test_window_plan(have, total, window, overlap):
    plan = window_plan(have, total, window, overlap)
    assert sum(plan) == total - have
    assert len(plan) == math.ceil((total - have) / (window - overlap))
    assert all(1 <= n <= window - overlap for n in plan)


def test_window_plan_errors():
    with pytest.raises(ValueError, match="overlap"):
        window_plan(4, 8, 4, 4)
    with pytest.raises(ValueError, match="fewer than the overlap"):
        window_plan(1, 8, 4, 2)
    with pytest.raises(ValueError, match="must exceed"):
        window_plan(8, 8, 4, 2)


@pytest.mark.parametrize("method", ["reconstruction", "replacement", "context"])
def test_extension_returns_n_frames_starting_with_the_input(tiny, method):
    cfg = tiny(**CONTEXT)
    torch.manual_seed(0)
    system, model = eval_system(cfg)
    seen = frames_seen(model)
    clip = torch.rand(1, 3, 3, 16, 16) * 2 - 1
    for total in (7, 10):  # window 4, overlap 2: 2 and 4 windows (the last one cut)
        seen.clear()
        out = extend_video(system, clip, total, method=method, overlap=2, steps=2, progress=False,
                           guidance=1.0, recon_weight=1.0)
        assert out.shape == (1, 3, total, 16, 16)
        assert torch.equal(out[:, :, :3], clip)
        assert set(seen) == {cfg.data.num_frames}  # the model only ever sees one window ...
        assert len(seen) == 2 * math.ceil((total - 3) / 2)  # ... and runs steps x windows times: linear in N
    assert torch.isfinite(out).all()


def test_context_method_needs_a_context_model(tiny):
    cfg = tiny()
    with pytest.raises(ValueError, match="context frames"):
        extend_video(eval_system(cfg)[0], torch.zeros(1, 3, 4, 16, 16), 6, method="context", steps=1,
                     progress=False)


def test_reconstruction_guidance_through_the_unet_under_inference_mode(tiny):
    """The wrapper turns autograd on inside torch.inference_mode and matches a no_grad run."""
    cfg = tiny()
    torch.manual_seed(0)
    _, model = eval_system(cfg)
    for p in model.parameters():  # a non-trivial network (fresh U-Nets output exactly 0)
        torch.nn.init.normal_(p, std=0.05)
    g = torch.Generator().manual_seed(0)
    x_a = torch.rand(2, 3, 4, 16, 16, generator=g)
    known = torch.tensor([[True, True, False, False]] * 2)
    z = torch.randn(2, 3, 4, 16, 16, generator=g)
    logsnr = torch.zeros(2)
    base = Denoiser(model, "v")
    den = reconstruction_guidance(lambda z_, l: base(z_, l, None), x_a * known[:, None, :, None, None],
                                  frame_selection(known), 5.0, correct=~known)
    with torch.no_grad():
        ref = den(z, logsnr)
        plain = base(z, logsnr, None)
    with torch.inference_mode():
        got = den(z.clone(), logsnr.clone())
    torch.testing.assert_close(got.x, ref.x)
    torch.testing.assert_close(ref.x[:, :, :2], plain.x[:, :, :2])  # eq. 7 corrects the unknown frames only
    assert not torch.allclose(ref.x[:, :, 2:], plain.x[:, :, 2:])


def test_context_guidance_is_one_batched_call_and_keeps_known_frames(tiny):
    cfg = tiny(**CONTEXT)
    system, model = eval_system(cfg)
    seen = frames_seen(model)
    batches = []
    model.register_forward_pre_hook(lambda mod, args: batches.append(args[0].shape[0]))
    x_a = torch.rand(1, 3, 4, 16, 16)
    known = torch.tensor([[True, False, False, False]])
    with torch.inference_mode():
        pred = conditional_denoiser(system, "context", x_a, known, guidance=2.0)(torch.randn(1, 3, 4, 16, 16),
                                                                                 torch.zeros(1))
    assert batches == [2] and seen == [4]  # conditional + unconditional in one forward
    assert torch.equal(pred.x[:, :, :1], x_a[:, :, :1])


def test_upsampling_matches_the_low_res_input(tiny):
    cfg = tiny()
    system, model = eval_system(cfg)
    low = torch.rand(1, 3, 4, 8, 8) * 1.6 - 0.8
    seen = frames_seen(model)
    err = {}
    for w_r in (0.0, 10.0):
        high = upsample_video(system, low, recon_weight=w_r, steps=4, progress=False, seed=1)
        assert high.shape == (1, 3, 4, 16, 16)
        err[w_r] = (torch.nn.functional.interpolate(high[0].transpose(0, 1), size=(8, 8), mode="bilinear",
                                                    antialias=True) - low[0].transpose(0, 1)).square().mean()
    assert err[10.0] < 0.5 * err[0.0], err
    assert set(seen) == {4}


def test_context_masks_cover_all_patterns():
    cfg = ContextConfig(max_frames=3, none_prob=0.2, interpolation_prob=0.5)
    g = torch.Generator().manual_seed(0)
    mask = sample_context_mask(4000, 8, cfg, generator=g)
    k = mask.sum(1)
    assert k.max() <= 3 and not mask.all(1).any()
    assert abs((k == 0).float().mean().item() - 0.2) < 0.03
    leading = mask[:, 0] & ~mask[:, -1]
    both = mask[:, 0] & mask[:, -1]
    assert leading.any() and both.any() and not (mask[:, -1] & ~mask[:, 0]).any()
    for row in mask[leading]:  # leading pattern: a prefix
        assert torch.equal(row, torch.arange(8) < row.sum())
    # joint image-video items: context stays inside the clip (frames before the first image)
    clip = torch.full((4000,), 5)
    assert not sample_context_mask(4000, 8, cfg, generator=g, clip_frames=clip)[:, 5:].any()


def test_add_context_feeds_known_frames_and_skips_them_in_the_loss():
    cfg = ContextConfig(max_frames=2, none_prob=0.0, interpolation_prob=0.0)
    x = torch.randn(3, 1, 4, 2, 2)
    cond, weight = add_context(x, Conditioning(), cfg, torch.Generator().manual_seed(0))
    known = cond.context_mask
    assert known[:, 0].all() and torch.equal(weight, (~known).float())
    torch.testing.assert_close(cond.context, x * known[:, None, :, None, None])
    assert add_context(x, Conditioning(), ContextConfig()) == (Conditioning(), None)
    with pytest.raises(ValueError, match="extra_in_channels"):
        check_context_config(cfg, 4, 3, 0)
    with pytest.raises(ValueError, match="below data.num_frames"):
        check_context_config(ContextConfig(max_frames=4), 4, 3, 4)


@pytest.mark.slow
def test_context_model_trains_and_extends_end_to_end(tmp_path, capsys):
    """`kinema train` a tiny context model, then `kinema sample`, `extend` (every method) and `upsample`."""
    import av

    from conftest import tiny_overrides
    from kinema.cli import main
    from kinema.data.io import write_video

    def frames_of(path):
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    run = tmp_path / "run"
    args = tiny_overrides(run, **CONTEXT, **{"train.steps": 3})
    assert main(["train", "demo", *args]) == 0
    assert main(["sample", str(run), "--num", "1", "--steps", "2", "--out", str(tmp_path / "s.mp4")]) == 0
    clip = tmp_path / "clip.mp4"
    write_video(clip, torch.rand(3, 5, 16, 16) * 2 - 1)
    for method in ("context", "replacement", "reconstruction"):
        out = tmp_path / f"long-{method}.mp4"
        assert main(["extend", str(run), "--input", str(clip), "--frames", "9", "--method", method, "--overlap", "2",
                     "--steps", "2", "--out", str(out)]) == 0
        assert len(frames_of(out)) == 9
    assert main(["extend", str(run), "--input", str(clip), "--frames", "9", "--overlap", "3", "--steps", "2",
                 "--out", str(tmp_path / "x.mp4")]) == 2  # context method (the default here) with 3 > 2 known frames
    assert "max_frames=2" in capsys.readouterr().err
    low = tmp_path / "low.mp4"
    write_video(low, torch.rand(3, 4, 8, 8) * 2 - 1)
    assert main(["upsample", str(run), "--input", str(low), "--steps", "2", "--out", str(tmp_path / "high.mp4")]) == 0
    high = frames_of(tmp_path / "high.mp4")
    assert len(high) == 4 and high[0].shape == (16, 16, 3)


def test_context_preset_is_consistent():
    from kinema.config import load_config

    cfg = load_config("vdm_moving_digits_context")
    u = cfg.model.unet
    check_context_config(cfg.train.context, cfg.data.num_frames, u.in_channels, u.extra_in_channels)
    assert cfg.train.context.max_frames > 0
