"""Text conditioning of the U-Net: masks really block information, the null text is finite and equals
"no text", drop_conditioning gives it, and shape errors name the offending tensor."""

import pytest
import torch

from kinema.conditioning import Conditioning, drop_conditioning
from kinema.models import UNet3D
from kinema.models.attention import SpatialAttention, TextCrossAttention

from model_helpers import randomize
from models.test_unet import tiny_cfg


def _model():
    return randomize(UNet3D(tiny_cfg(text_dim=6, attn_levels=(1,))), seed=1)


def _text(mask_rows):
    g = torch.Generator().manual_seed(3)
    mask = torch.tensor(mask_rows, dtype=torch.bool)
    return Conditioning(text_emb=torch.randn(*mask.shape, 6, generator=g), text_mask=mask)


def test_masked_tokens_do_not_reach_the_output_and_real_tokens_do():
    model = _model()
    z, logsnr = torch.randn(2, 3, 3, 8, 8), torch.zeros(2)
    cond = _text([[True, True, False, False], [True, False, False, False]])
    base = model(z, logsnr, cond)
    masked = Conditioning(text_emb=cond.text_emb.clone(), text_mask=cond.text_mask)
    masked.text_emb[:, 2:] = torch.randn(2, 2, 6) * 5  # only padded positions change
    torch.testing.assert_close(model(z, logsnr, masked), base)
    real = Conditioning(text_emb=cond.text_emb.clone(), text_mask=cond.text_mask)
    real.text_emb[0, 1] = torch.randn(6)  # a real token of item 0 changes
    out = model(z, logsnr, real)
    assert (out[0] - base[0]).abs().max() > 1e-4
    torch.testing.assert_close(out[1], base[1]), "items do not see each other's text"


def test_null_text_is_finite_and_equals_no_text():
    model = _model()
    z, logsnr = torch.randn(2, 3, 3, 8, 8), torch.tensor([-5.0, 5.0])
    null = drop_conditioning(_text([[True, True, True], [True, False, False]]))
    assert not null.text_mask.any()
    out = model(z, logsnr, null)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, model(z, logsnr, None))
    torch.testing.assert_close(out, model(z, logsnr, Conditioning()))


def test_text_changes_the_output_and_gradients_reach_it():
    model = _model()
    z, logsnr = torch.randn(1, 3, 2, 8, 8), torch.zeros(1)
    cond = _text([[True, True]])
    cond.text_emb.requires_grad_(True)
    out = model(z, logsnr, cond)
    assert (out - model(z, logsnr, None)).abs().max() > 1e-4
    out.square().mean().backward()
    assert cond.text_emb.grad.abs().sum() > 0


def test_cross_attention_keeps_frames_independent():
    layer = randomize(TextCrossAttention(8, text_dim=6, head_dim=4, norm_groups=4))
    x = torch.randn(1, 8, 4, 4, 4)
    cond = _text([[True, True, False]])
    base = layer(x, cond)
    x2 = x.clone()
    x2[:, :, 2] += 1.0
    diff = (layer(x2, cond) - base).abs().amax(dim=(0, 1, 3, 4))
    assert diff[2] > 0 and torch.all(diff[[0, 1, 3]] == 0)


def test_text_shape_errors_name_the_tensor():
    model = _model()
    z = torch.randn(1, 3, 2, 8, 8)
    with pytest.raises(ValueError, match=r"text_emb must have shape .*\(1, 4, 5\)"):
        model(z, torch.zeros(1), Conditioning(text_emb=torch.randn(1, 4, 5)))
    with pytest.raises(ValueError, match=r"text_mask must have shape"):
        model(z, torch.zeros(1), Conditioning(text_emb=torch.randn(1, 4, 6), text_mask=torch.ones(1, 3).bool()))
    plain = UNet3D(tiny_cfg())
    with pytest.raises(ValueError, match="not text-conditional"):
        plain(z, torch.zeros(1), Conditioning(text_emb=torch.randn(1, 4, 6)))


def _cross_attention_channels(model):
    return sorted(m.q.in_features for m in model.modules() if isinstance(m, TextCrossAttention))


def test_text_levels_choose_where_the_text_is_read():
    # levels 0 / 1 have 8 / 16 channels; the middle block (16) reads the text with its attention either way
    default = UNet3D(tiny_cfg(text_dim=6, attn_levels=(1,)))
    assert _cross_attention_channels(default) == [16, 16, 16, 16]  # 1 down + 2 up blocks at level 1, the middle
    fine = randomize(UNet3D(tiny_cfg(text_dim=6, attn_levels=(1,), text_levels=(0, 1))), seed=2)
    assert _cross_attention_channels(fine) == [8, 8, 8, 16, 16, 16, 16]
    assert not any(isinstance(m, SpatialAttention) and m.norm.num_channels == 8 for m in fine.modules()), \
        "level 0 gets the cross-attention alone, no spatial self-attention"
    # the full-resolution blocks really read the tokens: with the pooled route zeroed and no attention
    # elsewhere, the text changes the output when level 0 is in text_levels and not when it is not
    z, logsnr, cond = torch.randn(1, 3, 2, 8, 8), torch.zeros(1), _text([[True, True]])
    for levels, reads in (((0,), True), ((), False)):
        model = randomize(UNet3D(tiny_cfg(text_dim=6, attn_levels=(), text_levels=levels, middle_attention=False)),
                          seed=2)
        torch.nn.init.zeros_(model.embedding.text.pool.weight)
        change = (model(z, logsnr, cond) - model(z, logsnr, None)).abs().max()
        assert (change > 1e-4) if reads else (change == 0), (levels, change)


def test_text_levels_are_checked():
    with pytest.raises(ValueError, match=r"text_levels \(2,\) must be distinct indices"):
        tiny_cfg(text_dim=6, text_levels=(2,))
