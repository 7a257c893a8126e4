"""The backbone contract, checked for every registered backbone (and the test-only toy backbone):
output shapes, a zero-initialized start, joint-training masks that block information, conditioning
dropout that equals the null conditioning, determinism and gradient flow. A new backbone gets
these checks by registering (DESIGN.md section 3, "Many systems, one core")."""

import atexit
import dataclasses
import functools
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

import toy_backbone  # noqa: F401  (registers "toy")
from ldm_helpers import save_image_model
from model_helpers import randomize
from kinema.conditioning import Conditioning, drop_conditioning
from kinema.models import backbone_entry, backbone_names, backbone_spec, build_backbone

# Autoencoders (kind="autoencoder") do not follow the denoiser contract: tests/models/test_autoencoder.py.


@functools.cache
def tiny_image_model() -> str:
    """A fresh tiny unet3d image model saved once per session (the base of the video_ldm cases; a value
    given as a function is resolved when the case builds)."""
    folder = Path(tempfile.mkdtemp(prefix="kinema-image-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(save_image_model(folder))


# Small configs per backbone: (name, overrides of its config dataclass). Every registered backbone
# must appear here (test_every_backbone_is_covered), so a new one cannot skip the contract.
CASES = [
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=8, norm_groups=4)),
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=8, norm_groups=4,
                    num_classes=3, text_dim=6, scalar_conditions=("guidance_weight", "lowres_logsnr"))),
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(), head_dim=8, norm_groups=4,
                    temporal_attention=False, extra_in_channels=4)),
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(), head_dim=8, norm_groups=4,
                    temporal_mixing=("conv", "attention"), middle_attention=False)),
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=8, norm_groups=4,
                    text_dim=6, self_condition=True)),
    ("unet3d", dict(dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(1,), head_dim=8, norm_groups=4,
                    patch_size=2, self_condition=True, extra_in_channels=3, scalar_conditions=("lowres_logsnr",))),
    ("toy", dict(width=8)),
    ("toy", dict(width=8, num_classes=3)),
    ("walt", dict(hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(0, 2, 2), max_frames=8)),
    ("walt", dict(hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(0, 0, 0), spatial_window=(2, 2),
                  num_classes=3, text_dim=6, adaln_lora_rank=4, qk_norm=False, max_frames=8)),
    ("walt", dict(hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(0, 2, 2), max_frames=8, self_condition=True)),
    ("walt", dict(hidden_dim=16, depth=2, heads=2, spatiotemporal_window=(0, 2, 2), max_frames=8, extra_in_channels=3,
                  scalar_conditions=("lowres_logsnr",))),
    ("video_ldm", dict(base_path=tiny_image_model, head_dim=8, norm_groups=4)),
    ("video_ldm", dict(base_path=tiny_image_model, head_dim=8, norm_groups=4, temporal_attention=False,
                       conv_kernel="3x1x1")),
    ("video_ldm", dict(base_path=tiny_image_model, head_dim=8, norm_groups=4, extra_in_channels=4)),
]
IDS = ["unet3d", "unet3d-text-class-scalars", "unet3d-conv-context", "unet3d-mixed-temporal", "unet3d-self-condition",
       "unet3d-patch2-sr", "toy", "toy-class",
       "walt", "walt-text-class-lora", "walt-self-condition",
       "walt-sr", "video_ldm", "video_ldm-conv3x1x1", "video_ldm-context"]


def build(name, overrides, seed=0):
    torch.manual_seed(seed)
    overrides = {k: v() if callable(v) else v for k, v in overrides.items()}
    return build_backbone(name, backbone_entry(name).config_cls(**overrides))


def inputs(spec, b=2, f=4, seed=0):
    """z, logsnr and a Conditioning holding every field the backbone reads."""
    g = torch.Generator().manual_seed(seed)
    size = 8 * spec.size_multiple
    z = torch.randn(b, spec.in_channels, f, size, size, generator=g)
    cond = Conditioning()
    if spec.text_dim:
        cond.text_emb = torch.randn(b, 5, spec.text_dim, generator=g)
        cond.text_mask = torch.tensor([[True] * 3 + [False] * 2] * b)
    if spec.num_classes:
        cond.class_labels = torch.arange(b) % spec.num_classes
    if spec.extra_in_channels == spec.in_channels:  # an SR stage: a half-size low-resolution video
        cond.lowres = torch.randn(b, spec.in_channels, f, size // 2, size // 2, generator=g)
    elif spec.extra_in_channels:
        cond.context = torch.randn(z.shape, generator=g)
        cond.context_mask = torch.zeros(b, f, dtype=torch.bool)
        cond.context_mask[:, 0] = True
    if "self_cond" in spec.reads:
        cond.self_cond = torch.randn(z.shape, generator=g)
    for name in ("guidance_weight", "lowres_logsnr", "fps"):
        if name in spec.reads:
            setattr(cond, name, torch.rand(b, generator=g) * 3)
    return z, torch.linspace(-5, 5, b), cond


def test_every_backbone_is_covered():
    assert set(backbone_names(kind="denoiser")) <= {name for name, _ in CASES}


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_denoiser_contract_shapes_and_zero_start(name, overrides):
    model = build(name, overrides).eval()
    spec = backbone_spec(model)
    z, logsnr, cond = inputs(spec)
    with torch.no_grad():
        out = model(z, logsnr, cond)
    assert out.shape == (z.shape[0], spec.out_channels, *z.shape[2:])
    assert torch.count_nonzero(out) == 0, "a fresh backbone outputs exactly 0 (zero-initialized output layers)"


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_joint_training_mask_blocks_information(name, overrides):
    model = randomize(build(name, overrides), seed=1).eval()
    spec = backbone_spec(model)
    assert "frame_segments" in spec.reads
    z, logsnr, cond = inputs(spec, b=1, f=5)
    cond.frame_segments = torch.tensor([[0, 0, 0, 1, 2]])  # a 3-frame clip, then two independent images
    if cond.context_mask is not None:
        cond.context_mask = torch.tensor([[True, False, False, False, False]])
    z2 = z.clone()
    z2[:, :, 3] += 1.0  # perturb the first image
    with torch.no_grad():
        a, b = model(z, logsnr[:1], cond), model(z2, logsnr[:1], cond)
    assert torch.equal(a[:, :, [0, 1, 2, 4]], b[:, :, [0, 1, 2, 4]]), "no information crosses segments"
    assert (a[:, :, 3] - b[:, :, 3]).abs().max() > 1e-4, "the perturbed frame itself changes"
    cond.frame_segments = None  # one clip: now the perturbation must reach the other frames
    with torch.no_grad():
        c, d = model(z, logsnr[:1], cond), model(z2, logsnr[:1], cond)
    assert (c[:, :, 0] - d[:, :, 0]).abs().max() > 1e-6, "frames of one clip do interact"


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_dropped_conditioning_is_the_null_conditioning(name, overrides):
    model = randomize(build(name, overrides), seed=1).eval()
    spec = backbone_spec(model)
    z, logsnr, cond = inputs(spec)
    dropped = drop_conditioning(cond)
    absent = dataclasses.replace(cond, text_emb=None, text_mask=None, class_labels=None)
    if cond.context is not None:  # a context model always takes its channels: null = no known frame
        absent.context_mask = torch.zeros_like(cond.context_mask)
    with torch.no_grad():
        torch.testing.assert_close(model(z, logsnr, dropped), model(z, logsnr, absent), rtol=0, atol=1e-5)
        if spec.text_dim or spec.num_classes:
            assert (model(z, logsnr, cond) - model(z, logsnr, dropped)).abs().max() > 1e-4


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_determinism(name, overrides):
    a, b = build(name, overrides, seed=3), build(name, overrides, seed=3)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    randomize(a, seed=1), randomize(b, seed=1)
    z, logsnr, cond = inputs(backbone_spec(a))
    with torch.no_grad():
        assert torch.equal(a.eval()(z, logsnr, cond), b.eval()(z, logsnr, cond))


@pytest.mark.parametrize("name,overrides", CASES, ids=IDS)
def test_gradients_reach_every_trainable_parameter(name, overrides):
    model = randomize(build(name, overrides), seed=1).train()
    z, logsnr, cond = inputs(backbone_spec(model))
    weights = torch.randn(z.shape[0], backbone_spec(model).out_channels, *z.shape[2:],
                          generator=torch.Generator().manual_seed(5))
    (model(z, logsnr, cond) * weights).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
