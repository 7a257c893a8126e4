"""The W.A.L.T transformer backbone (Gupta et al. 2023): window partition round trips, window
attention that really stays inside its windows, segment-aware positions, zero start, gradient flow,
the qk-norm / AdaLN-LoRA / checkpointing variants, and a tiny run through the trainer and sampler."""

import pytest
import torch

from kinema.config import load_config
from kinema.conditioning import Conditioning
from kinema.models import build_backbone
from kinema.models.walt import (WALT, WALTConfig, WindowAttention, positions_in_segment, window_merge,
                                window_partition)
from kinema.pipelines.sample import sample_videos
from kinema.train.loop import Trainer
from model_helpers import randomize


def tiny(**kw):
    base = dict(hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(2, 2, 2), max_frames=8)
    base.update(kw)
    torch.manual_seed(0)
    return WALT(WALTConfig(**base))


@pytest.mark.parametrize("shape,window", [((2, 4, 6, 8, 3), (2, 3, 4)), ((1, 1, 4, 4, 5), (1, 4, 4)),
                                          ((3, 6, 2, 2, 1), (3, 1, 2)), ((1, 5, 4, 4, 2), (5, 2, 1))])
def test_window_partition_and_merge_round_trip(shape, window):
    x = torch.randn(shape)
    windows = window_partition(x, window)
    b, t, h, w, d = shape
    assert windows.shape == (b * (t // window[0]) * (h // window[1]) * (w // window[2]),
                             window[0] * window[1] * window[2], d)
    assert torch.equal(window_merge(windows, window, (b, t, h, w)), x)
    # the first window holds exactly the top-left-first block of the grid
    assert torch.equal(windows[0], x[0, :window[0], :window[1], :window[2]].reshape(-1, d))


def test_window_partition_names_sizes_that_do_not_divide():
    with pytest.raises(ValueError, match="4x6x8.*3x4x4"):
        window_partition(torch.randn(1, 4, 6, 8, 2), (3, 4, 4))
    with pytest.raises(ValueError, match="4x6x8.*2x4x4"):
        window_merge(torch.randn(6, 32, 2), (2, 4, 4), (1, 4, 6, 8))


@pytest.mark.parametrize("window", [(1, 2, 2), (2, 2, 4), (4, 1, 1)])
def test_one_window_attention_layer_stays_inside_its_window(window):
    torch.manual_seed(0)
    layer = WindowAttention(8, 2, qk_norm=True)
    x = torch.randn(1, 4, 4, 4, 8)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1.0  # perturb one token: only its own window may change
    with torch.no_grad():
        changed = (layer(x, window) - layer(x2, window)).abs().amax(-1) > 0  # [1, T, H, W]
    inside = torch.zeros(1, 4, 4, 4, dtype=torch.bool)
    inside[0, :window[0], :window[1], :window[2]] = True
    assert not changed[~inside].any(), "a token outside the perturbed token's window changed"
    assert changed[inside].all(), "every token of the window sees the perturbation"


def test_segment_mask_inside_a_spatiotemporal_window():
    torch.manual_seed(0)
    layer = WindowAttention(8, 2, qk_norm=False)
    x = torch.randn(1, 4, 2, 2, 8)
    x2 = x.clone()
    x2[0, 3] += 1.0  # frame 3 is an independent image inside the same 4-frame window
    segments = torch.tensor([[0, 0, 0, 1]])
    with torch.no_grad():
        a, b = layer(x, (4, 2, 2), segments), layer(x2, (4, 2, 2), segments)
        c, d = layer(x, (4, 2, 2)), layer(x2, (4, 2, 2))
    assert torch.equal(a[:, :3], b[:, :3])
    assert (c[:, :3] - d[:, :3]).abs().max() > 1e-4  # without segments the window mixes them


def test_positions_count_within_segments():
    segments = torch.tensor([[0, 0, 0, 1, 2], [0, 0, 1, 1, 1]])
    assert positions_in_segment(segments).tolist() == [[0, 1, 2, 0, 0], [0, 1, 0, 1, 2]]


def test_fresh_model_outputs_zero_and_blocks_are_identity():
    model = tiny(text_dim=4, num_classes=2, adaln_lora_rank=2).eval()
    z = torch.randn(2, 3, 4, 8, 8)
    cond = Conditioning(text_emb=torch.randn(2, 3, 4), class_labels=torch.tensor([0, 1]))
    with torch.no_grad():
        assert torch.count_nonzero(model(z, torch.tensor([-1.0, 2.0]), cond)) == 0
        x = torch.randn(2, 4, 4, 4, 16)
        c = torch.randn(2, 16)
        shared = model.shared_adaln(c)
        for block in model.blocks:
            assert torch.equal(block(x, c, shared, (2, 2, 2), None, cond), x)


@pytest.mark.parametrize("kw", [dict(qk_norm=True), dict(qk_norm=False, adaln_lora_rank=3),
                                dict(gradient_checkpointing=True, patch_size=(2, 2, 2),
                                     spatiotemporal_window=(1, 2, 2))])
def test_variants_build_run_and_get_gradients(kw):
    model = randomize(tiny(**kw), seed=1).train()
    z = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    out = model(z, torch.tensor([0.0, 3.0]), Conditioning())
    assert out.shape == z.shape and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing and z.grad.abs().sum() > 0
    if kw.get("adaln_lora_rank"):
        assert model.shared_adaln is not None and model.blocks[0].adaln[0].out_features == 3


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for ckpt in (False, True):
        model = randomize(tiny(gradient_checkpointing=ckpt), seed=1).train()
        model(torch.ones(1, 3, 4, 8, 8), torch.tensor([1.0]), None).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_config_validation_names_the_bad_value():
    with pytest.raises(ValueError, match="depth must be even.*3"):
        WALTConfig(depth=3)
    with pytest.raises(ValueError, match="hidden_dim=30.*heads=4"):
        WALTConfig(hidden_dim=30, heads=4)
    with pytest.raises(ValueError, match=r"spatiotemporal_window.*\(2, 2\)"):
        WALTConfig(spatiotemporal_window=(2, 2))
    model = tiny()
    with pytest.raises(ValueError, match="divisible by 4.*6x6"):
        model(torch.zeros(1, 3, 4, 6, 6), torch.zeros(1), None)
    with pytest.raises(ValueError, match="max_frames.*10 token frames"):
        model(torch.zeros(1, 3, 10, 8, 8), torch.zeros(1), None)
    temporal = tiny(patch_size=(2, 2, 2), spatiotemporal_window=(1, 2, 2))
    with pytest.raises(ValueError, match=r"\[\[0, 0, 0, 1\]\].*temporal patch of 2"):
        temporal(torch.zeros(1, 3, 4, 8, 8), torch.zeros(1), Conditioning(frame_segments=torch.tensor([[0, 0, 0, 1]])))


def test_tiny_walt_trains_and_samples(tmp_path):
    cfg = load_config(None, [
        "model.name=walt", "model.walt.hidden_dim=16", "model.walt.depth=2", "model.walt.heads=2",
        "model.walt.spatiotemporal_window=[2,4,4]", "model.walt.max_frames=4",
        "data.num_frames=4", "data.size=16", f"train.out_dir={tmp_path / 'run'}", "train.batch_size=2",
        "train.steps=3", "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=3", "train.sample_every=0",
        "train.progress=false", "train.tensorboard=false", "sample.steps=2"])
    assert cfg.model.name == "walt" and cfg.model.walt.spatiotemporal_window == (2, 4, 4)
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, WALT)
    before = trainer.model.out.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, trainer.model.out.weight), "the zero-initialized output layer learns"
    videos = sample_videos(trainer.ema_system(), 2, steps=2, seed=0)
    assert videos.shape == (2, 3, 4, 16, 16) and torch.isfinite(videos).all()


def test_registered_under_model_walt():
    model = build_backbone("walt", WALTConfig(hidden_dim=16, depth=2, heads=2))
    assert model.spec.reads == ("frame_segments",) and model.spec.size_multiple == 8
