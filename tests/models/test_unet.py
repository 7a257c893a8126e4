import pytest
import torch

from kinema.conditioning import Conditioning
from kinema.models import UNet3D, UNetConfig, build_model
from kinema.models.blocks import NoiseLevelEmbedding


def tiny_cfg(**kw):
    base = dict(in_channels=3, dim=8, dim_mults=(1, 2), num_res_blocks=1, attn_levels=(0, 1), head_dim=4,
                norm_groups=4)
    base.update(kw)
    return UNetConfig(**base)


def randomize(model, seed=0):
    """Re-randomize every parameter (the zero-initialized ones too) so information can flow."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("frames,size", [(4, 8), (1, 8), (3, 12)])
def test_output_shape(frames, size):
    model = UNet3D(tiny_cfg(out_channels=5))
    z = torch.randn(2, 3, frames, size, size)
    assert model(z, torch.zeros(2)).shape == (2, 5, frames, size, size)


def test_zero_init_and_gradient_flow():
    model = UNet3D(tiny_cfg())
    z = torch.randn(2, 3, 4, 8, 8)
    assert torch.equal(model(z, torch.zeros(2)), torch.zeros_like(z)), "fresh model outputs exactly 0"
    with torch.no_grad():
        model.conv_out.weight.normal_(0, 0.1)
    model(z, torch.zeros(2)).square().mean().backward()
    assert model.conv_in.weight.grad is not None and model.conv_in.weight.grad.abs().sum() > 0


def test_shape_errors_name_the_shape():
    model = UNet3D(tiny_cfg(dim_mults=(1, 2, 2), attn_levels=(1,)))
    with pytest.raises(ValueError, match=r"divisible by 4.*\(1, 3, 2, 6, 6\)"):
        model(torch.randn(1, 3, 2, 6, 6), torch.zeros(1))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 1, 2, 8, 8), torch.zeros(1))
    with pytest.raises(ValueError, match="attn_levels"):
        UNetConfig(dim_mults=(1, 2), attn_levels=(2,))


def _diff(out_a, out_b):
    return (out_a - out_b).abs().amax(dim=(0, 1, 3, 4))  # per frame


def test_joint_training_mask_blocks_information_between_images():
    """VDM joint image-video training: frames 0-3 are one clip, 4 and 5 independent images."""
    torch.manual_seed(0)
    model = randomize(UNet3D(tiny_cfg())).eval()
    z = torch.randn(1, 3, 6, 8, 8)
    cond = Conditioning(frame_segments=torch.tensor([[0, 0, 0, 0, 1, 2]]))
    base = model(z, torch.zeros(1), cond)

    image_poked = z.clone()
    image_poked[:, :, 4] += 1.0
    d = _diff(model(image_poked, torch.zeros(1), cond), base)
    assert d[4] > 1e-3
    assert torch.all(d[[0, 1, 2, 3, 5]] < 1e-5), d

    video_poked = z.clone()
    video_poked[:, :, 1] += 1.0
    d = _diff(model(video_poked, torch.zeros(1), cond), base)
    assert torch.all(d[[0, 1, 2, 3]] > 1e-3), d
    assert torch.all(d[[4, 5]] < 1e-5), d

    unmasked = _diff(model(video_poked, torch.zeros(1)), model(z, torch.zeros(1)))
    assert torch.all(unmasked > 1e-3), "without segments every frame sees frame 1"


def test_temporal_convolution_variant_and_class_conditioning():
    model = randomize(UNet3D(tiny_cfg(temporal_attention=False, num_classes=3)))
    z = torch.randn(2, 3, 4, 8, 8)
    a = model(z, torch.zeros(2), Conditioning(class_labels=torch.tensor([0, 1])))
    b = model(z, torch.zeros(2), Conditioning(class_labels=torch.tensor([2, 1])))
    assert (a[0] - b[0]).abs().max() > 1e-4 and torch.allclose(a[1], b[1])
    null = model(z, torch.zeros(2))  # no labels: the null label
    torch.testing.assert_close(null, model(z, torch.zeros(2), Conditioning(class_labels=torch.tensor([3, 3]))))


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    plain = randomize(UNet3D(tiny_cfg()))
    ckpt = UNet3D(tiny_cfg(gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    z = torch.randn(2, 3, 4, 8, 8)
    outs, grads = [], []
    for m in (plain, ckpt):
        out = m(z, torch.tensor([1.0, -2.0]))
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_noise_embedding_is_finite_and_distinct():
    emb = NoiseLevelEmbedding(16, 32)
    lam = torch.linspace(-30, 30, 61)
    out = emb(lam)
    assert torch.isfinite(out).all()
    assert torch.cdist(out, out).add(torch.eye(61) * 1e3).min() > 1e-4


def test_registry():
    assert isinstance(build_model("unet3d", tiny_cfg()), UNet3D)
    with pytest.raises(ValueError, match="walt"):
        build_model("walt", tiny_cfg())
