import math

import pytest
import torch

from kinema.metrics.similarity import gaussian_window, psnr, ssim


def video(seed, shape=(2, 3, 4, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 1.6 - 0.8


def test_identical_videos():
    x = video(0)
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)


def test_symmetric_and_bounded():
    x, y = video(0), video(1)
    assert torch.allclose(psnr(x, y), psnr(y, x))
    assert torch.allclose(ssim(x, y), ssim(y, x))
    s = ssim(x, y)
    assert (s < 0.5).all() and (s > -1).all()
    # closer videos score higher
    assert (ssim(x, x + 0.05 * (y - x)) > s).all() and (psnr(x, x + 0.05 * (y - x)) > psnr(x, y)).all()


@pytest.mark.parametrize("c", [0.1, 0.4])
def test_constant_offset_closed_forms(c):
    x = video(2)
    # PSNR: MSE = c², so 10 log10(L² / c²) with L = 2
    assert psnr(x, x + c) == pytest.approx(torch.full((2,), 10 * math.log10(4 / c**2)), rel=1e-5)
    # SSIM of constant frames a and a + c: only the luminance term is left
    a = -0.3
    const = torch.full((1, 1, 2, 12, 12), a)
    c1 = (0.01 * 2) ** 2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    assert ssim(const, const + c).item() == pytest.approx(expected, rel=1e-5)


def test_gaussian_window_and_errors():
    w = gaussian_window()
    assert w.shape == (11, 11) and w.sum().item() == pytest.approx(1.0) and torch.equal(w, w.T)
    with pytest.raises(ValueError, match="8x8"):
        ssim(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(1, 1, 1, 8, 8), torch.zeros(1, 1, 2, 8, 8))
