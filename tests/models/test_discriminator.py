"""Patch discriminators: a map of logits per frame; the 2D one judges each frame on its own, the 3D one sees
neighbouring frames; no item depends on the others of its batch; the hinge losses' values."""

import pytest
import torch

from kinema.models.discriminator import DiscriminatorConfig, build_discriminator, hinge_d_loss, hinge_g_loss


@pytest.mark.parametrize("kind", ["2d", "3d"])
def test_patch_logits_and_what_each_sees(kind):
    torch.manual_seed(0)
    disc = build_discriminator(DiscriminatorConfig(kind, in_channels=3, width=4, layers=2, norm_groups=2))
    video = torch.randn(2, 3, 6, 32, 32)
    logits = disc(video)
    assert logits.shape == (2, 6, 6, 6)  # [B, F, H', W']: 32 -> 16 -> 8 -> 7 -> 6 patches
    changed = video.clone()
    changed[:, :, 0] += 1.0
    out = disc(changed)
    assert not torch.equal(out[:, 0], logits[:, 0])
    assert torch.equal(out[:, 5], logits[:, 5])  # far frames: never seen
    assert torch.equal(out[:, 1], logits[:, 1]) == (kind == "2d")  # the 3D one sees the neighbouring frame
    other = video.clone()
    other[1] += 1.0
    assert torch.equal(disc(other)[0], logits[0])  # group norm: an item never depends on its batch


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([-3.0, -1.0, 0.5])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (1.0 / 3 + 1.5 / 3))
    assert hinge_d_loss(torch.ones(4) * 1.5, -torch.ones(4) * 2).item() == 0.0  # confident and right: no loss
    assert hinge_g_loss(fake).item() == pytest.approx(-(-3.5 / 3))


def test_config_refusals():
    with pytest.raises(ValueError, match="kind must be one of"):
        DiscriminatorConfig("1d")
    with pytest.raises(ValueError, match="layers must be >= 1"):
        DiscriminatorConfig(layers=0)
