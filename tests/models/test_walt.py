"""The W.A.L.T transformer backbone (Gupta et al. 2023): window partition round trips, window
attention that really stays inside its windows, segment-aware positions, zero start, gradient flow,
the qk-norm / AdaLN-LoRA / checkpointing variants, self-conditioning, and a tiny run through the
trainer and sampler."""

import itertools

import pytest
import torch

from kinema.config import load_config
from kinema.conditioning import Conditioning
from kinema.models import build_backbone
from kinema.models.walt import (WALT, WALTConfig, WindowAttention, window_merge,
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


def test_window_partition_round_trips_for_every_window_and_refuses_every_other():
    x = torch.randn(2, 4, 6, 4, 3)  # [B, T, H, W, D]
    for window in itertools.product(range(1, 5), range(1, 7), range(1, 5)):
        if all(g % k == 0 for g, k in zip((4, 6, 4), window)):
            assert torch.equal(window_merge(window_partition(x, window), window, (2, 4, 6, 4)), x), window
        else:
            with pytest.raises(ValueError, match="4x6x4.*{}x{}x{}".format(*window)):
                window_partition(x, window)


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


@pytest.mark.parametrize("kw", [dict(text_dim=4, num_classes=2, adaln_lora_rank=2), dict(self_condition=True, depth=4)])
def test_fresh_model_outputs_zero_and_blocks_are_identity(kw):
    model = tiny(**kw).eval()
    z = torch.randn(2, 3, 4, 8, 8)
    cond = Conditioning(text_emb=torch.randn(2, 3, 4), class_labels=torch.tensor([0, 1]))
    if kw.get("self_condition"):
        cond = Conditioning(self_cond=torch.randn_like(z))
    seen = []  # the token stream entering the first block and leaving the last
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.blocks[-1].register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        assert torch.count_nonzero(model(z, torch.tensor([-1.0, 2.0]), cond)) == 0
        assert torch.equal(seen[0], seen[1]), "the whole block stack is the identity on the input embedding"
        x = torch.randn(2, 4, 4, 4, 16)
        c = torch.randn(2, 16)
        shared = None if model.shared_adaln is None else model.shared_adaln(c)
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


@pytest.mark.parametrize("self_condition", [False, True])
def test_tiny_walt_trains_and_samples(tmp_path, self_condition):
    cfg = load_config(None, [
        f"model.walt.self_condition={str(self_condition).lower()}",
        "model.name=walt", "model.walt.hidden_dim=16", "model.walt.depth=2", "model.walt.heads=2",
        "model.walt.spatiotemporal_window=[2,4,4]", "model.walt.max_frames=4",
        "data.num_frames=4", "data.size=16", f"train.out_dir={tmp_path / 'run'}", "train.batch_size=2",
        "train.steps=3", "train.warmup_steps=1", "train.log_every=1", "train.ckpt_every=3", "train.sample_every=0",
        "train.progress=false", "train.tensorboard=false", "sample.steps=2"])
    assert cfg.model.name == "walt" and cfg.model.walt.spatiotemporal_window == (2, 4, 4)
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, WALT)
    assert trainer.objective.self_condition == (0.5 if self_condition else 0.0), "enabled from the spec"
    before = trainer.model.out.weight.detach().clone()
    trainer.fit()
    assert not torch.equal(before, trainer.model.out.weight), "the zero-initialized output layer learns"
    videos = sample_videos(trainer.ema_system(), 2, steps=2, seed=0)
    assert videos.shape == (2, 3, 4, 16, 16) and torch.isfinite(videos).all()


def test_registered_under_model_walt():
    model = build_backbone("walt", WALTConfig(hidden_dim=16, depth=2, heads=2))
    assert model.spec.reads == ("frame_segments",) and model.spec.size_multiple == 8


def test_bad_latent_sizes_fail_before_compute_and_say_what_works():
    model = tiny(patch_size=(1, 2, 2), spatial_window=(2, 2), spatiotemporal_window=(2, 2, 2))  # H, W: x4; F: x2

    def no_compute(*args):
        raise AssertionError("the model computed before refusing the input")

    model.patch_embed.register_forward_pre_hook(no_compute)
    with pytest.raises(ValueError, match=r"divisible by 4; the input z is 10x12 \(crop to 8x12 or pad to 12x12\)"):
        model(torch.zeros(1, 3, 4, 10, 12), torch.zeros(1), None)
    with pytest.raises(ValueError, match=r"multiple of 2; the input z has 5 \(trim to 4 or pad to 6\)"):
        model(torch.zeros(1, 3, 5, 8, 8), torch.zeros(1), None)
    with pytest.raises(ValueError, match=r"at least 2 frames.*has 1 \(pad to 2\)"):
        model(torch.zeros(1, 3, 1, 8, 8), torch.zeros(1), None)


def test_self_condition_input_reaches_the_output_and_is_refused_when_off():
    model = randomize(tiny(self_condition=True), seed=2).eval()
    assert "self_cond" in model.spec.reads and model.patch_embed.in_channels == 6
    z, logsnr = torch.randn(2, 3, 4, 8, 8), torch.tensor([0.0, 1.0])
    x_hat = torch.randn_like(z)
    bumped = x_hat.clone()
    bumped[0, :, 0, 0, 0] += 1.0  # one pixel of item 0's estimate
    with torch.no_grad():
        a = model(z, logsnr, Conditioning(self_cond=x_hat))
        b = model(z, logsnr, Conditioning(self_cond=bumped))
        none, zeros = model(z, logsnr, Conditioning()), model(z, logsnr, Conditioning(self_cond=torch.zeros_like(z)))
    assert (a[0] - b[0]).abs().max() > 1e-4, "the estimate changes the output"
    assert torch.equal(a[1], b[1]), "items do not mix"
    assert torch.equal(none, zeros), "no estimate is the zero estimate"
    with pytest.raises(ValueError, match=r"self_cond must have z's shape \(2, 3, 4, 8, 8\)"):
        model(z, logsnr, Conditioning(self_cond=x_hat[:, :, :2]))
    plain = tiny()
    assert "self_cond" not in plain.spec.reads
    with pytest.raises(ValueError, match="self_condition=false"):
        plain(z, logsnr, Conditioning(self_cond=x_hat))


@pytest.mark.parametrize("self_condition", [False, True])
def test_tiny_walt_memorizes_a_clip_with_and_without_self_conditioning(self_condition):
    from kinema.diffusion.objective import SELF_CONDITION_PROB, LocalRandom, TrainBatch
    from kinema.models.backbone import backbone_spec
    from kinema.system import build_objective

    cfg = load_config(None, ["model.name=walt", "model.walt.hidden_dim=32", "model.walt.depth=2",
                             "model.walt.heads=2", f"model.walt.self_condition={str(self_condition).lower()}",
                             "model.walt.spatiotemporal_window=[2,4,4]", "model.walt.max_frames=8",
                             "data.num_frames=8", "data.size=16"])
    torch.manual_seed(0)
    model = WALT(cfg.model.walt)
    objective = build_objective(cfg, backbone_spec(model))
    assert objective.self_condition == (SELF_CONDITION_PROB if self_condition else 0.0)
    clip = torch.linspace(-1, 1, 8)[None, None, :, None, None].expand(2, 3, 8, 16, 16).contiguous()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = LocalRandom(torch.Generator().manual_seed(0), 2)
    losses = []
    for _ in range(60):
        loss, _ = objective({"model": model}, TrainBatch(clip, Conditioning(), {}), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


def test_window_attention_is_sdpa_without_a_mask_unless_segments_need_one(monkeypatch):
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape, None if attn_mask is None else attn_mask.shape))
        return sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny(spatiotemporal_window=(2, 2, 2)).eval()  # 4 frames of 4x4 tokens: spatial 1x4x4, st 2x2x2
    z = torch.randn(1, 3, 4, 8, 8)
    with torch.no_grad():
        model(z, torch.zeros(1), None)
        assert calls == [((4, 2, 16, 8), None), ((8, 2, 8, 8), None)], "windows are batch entries, no mask"
        calls.clear()
        model(z, torch.zeros(1), Conditioning(frame_segments=torch.tensor([[0, 0, 0, 1]])))
    # the segment mask is per window (8 windows of 8 tokens), only in the spatiotemporal block
    assert calls == [((4, 2, 16, 8), None), ((8, 2, 8, 8), (8, 1, 8, 8))]


def test_sr_stage_reads_the_lowres_video_and_its_augmentation_level():
    from kinema.diffusion.superres import SRConfig, check_sr_config

    model = randomize(tiny(extra_in_channels=3, scalar_conditions=("lowres_logsnr",)), seed=2).eval()
    assert {"lowres", "lowres_logsnr"} <= set(model.spec.reads) and model.spec.extra_in_channels == 3
    assert model.patch_embed.in_channels == 6
    check_sr_config(SRConfig(spatial_factor=2, aug_max=0.5), 4, 16, model.spec)  # accepted as an SR stage
    with pytest.raises(ValueError, match="needs a backbone that reads the low-resolution video"):
        check_sr_config(SRConfig(spatial_factor=2), 4, 16, tiny().spec)
    z, logsnr = torch.randn(2, 3, 4, 8, 8), torch.tensor([0.0, 1.0])
    low = torch.randn(2, 3, 4, 4, 4)
    bumped = low.clone()
    bumped[0, :, 1, 0, 0] += 1.0  # one low-resolution pixel of item 0
    with torch.no_grad():
        a = model(z, logsnr, Conditioning(lowres=low))
        b = model(z, logsnr, Conditioning(lowres=bumped))
        c = model(z, logsnr, Conditioning(lowres=low, lowres_logsnr=torch.tensor([-3.0, 20.0])))
    assert (a[0] - b[0]).abs().max() > 1e-4, "the low-resolution video changes the output"
    assert torch.equal(a[1], b[1]), "items do not mix"
    assert (a[0] - c[0]).abs().max() > 1e-4, "the augmentation level changes the output"
    torch.testing.assert_close(a[1], c[1], rtol=0, atol=1e-5)  # unset = 20, the clean input
    with pytest.raises(ValueError, match=r"WALT was built with extra_in_channels=3 but cond gives 0"):
        model(z, logsnr, Conditioning())
    with pytest.raises(ValueError, match="unknown names.*'fsp'"):
        WALTConfig(scalar_conditions=("fsp",))
    with pytest.raises(ValueError, match="extra_in_channels must be >= 0, got -1"):
        WALTConfig(extra_in_channels=-1)
