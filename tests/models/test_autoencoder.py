"""The causal 3D autoencoder: shapes, causality (exact), image == first frame, chunked == one pass,
clear shape errors, the posterior's math and the VideoAutoencoder interface."""

import pytest
import torch

from kinema.models.autoencoder import (CausalAE, CausalAEConfig, VideoAutoencoder, depth_to_time,
                                       estimate_latent_std, kl_divergence, latent_frames, posterior_sample,
                                       segment_runs)


def tiny_ae(seed=0, **overrides) -> CausalAE:
    torch.manual_seed(seed)
    cfg = dict(latent_channels=3, width=4, num_res_blocks=1, spatial_factor=4, temporal_factor=4, norm_groups=2)
    cfg.update(overrides)
    return CausalAE(CausalAEConfig(**cfg)).eval().double()


def video(b=2, f=9, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, f, size, size, generator=g, dtype=torch.float64) * 2 - 1)


def test_shapes_and_interface():
    ae = tiny_ae()
    assert isinstance(ae, VideoAutoencoder)
    x = video()
    z = ae.encode(x, chunk_frames=0)
    assert z.shape == (2, 3, 3, 4, 4) == (2, *ae.latent_shape(9, 16, 16))
    assert ae.decode(z, chunk_frames=0).shape == x.shape
    out = ae(x)
    assert out.recon.shape == x.shape and out.mean.shape == out.logvar.shape == z.shape
    assert ae.latent_shape(1, 16, 16) == (3, 1, 4, 4)  # an image is one latent frame
    assert tiny_ae(temporal_factor=2).latent_shape(9, 16, 16) == (3, 5, 4, 4)
    assert tiny_ae(temporal_factor=1).latent_shape(8, 16, 16) == (3, 8, 4, 4)
    assert tiny_ae(spatial_factor=8, temporal_factor=4).latent_shape(17, 32, 16) == (3, 5, 4, 2)


def test_shape_errors_name_the_fix():
    ae = tiny_ae()
    with pytest.raises(ValueError, match=r"frames=8 is not 1 \+ 4k: trim to 5 or pad to 9"):
        ae.latent_shape(8, 16, 16)
    with pytest.raises(ValueError, match="height=18 is not divisible by the spatial factor 4: crop to 16 or pad to 20"):
        ae.latent_shape(9, 18, 16)
    with pytest.raises(ValueError, match=r"frames=8 is not 1 \+ 4k"):
        ae.encode(video(f=8))  # raised before any compute
    with pytest.raises(ValueError, match="3, F, H, W"):
        ae.encode(torch.zeros(1, 1, 5, 16, 16))
    with pytest.raises(ValueError, match="must be a power of 2"):
        CausalAEConfig(spatial_factor=6)
    with pytest.raises(ValueError, match="temporal_factor <= spatial_factor"):
        CausalAEConfig(spatial_factor=2, temporal_factor=4)
    assert latent_frames(13, 4) == 4


@pytest.mark.parametrize("tf", [4, 2, 1])
def test_encoder_is_causal(tf):
    """Perturbing pixel frame t never changes latent frames whose span ends before t (exactly)."""
    ae = tiny_ae(temporal_factor=tf)
    x = video(f=9)
    z = ae.encode(x, chunk_frames=0)
    for t in range(9):
        y = x.clone()
        y[:, :, t] += 1.0
        z2 = ae.encode(y, chunk_frames=0)
        first_affected = 0 if t == 0 else (t - 1) // tf + 1  # latent j's span ends at frame j * tf
        assert torch.equal(z[:, :, :first_affected], z2[:, :, :first_affected]), t
        assert not torch.equal(z[:, :, first_affected], z2[:, :, first_affected]), t  # and it is seen


@pytest.mark.parametrize("tf", [4, 2])
def test_decoder_is_causal(tf):
    """Perturbing latent frame j never changes decoded frames before its span (1 + tf (j - 1))."""
    ae = tiny_ae(temporal_factor=tf)
    z = torch.randn(1, 3, 4, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = ae.decode(z, chunk_frames=0)
    for j in range(4):
        z2 = z.clone()
        z2[:, :, j] += 1.0
        x2 = ae.decode(z2, chunk_frames=0)
        start = 0 if j == 0 else 1 + tf * (j - 1)
        assert torch.equal(x[:, :, :start], x2[:, :, :start]), j
        assert not torch.equal(x[:, :, start], x2[:, :, start]), j


def test_image_encodes_like_the_first_frame_of_a_video():
    ae = tiny_ae()
    x = video(f=9)
    image = x[:, :, :1]
    z_video, z_image = ae.encode(x, chunk_frames=0), ae.encode(image, chunk_frames=0)
    assert z_image.shape[2] == 1
    # equal up to float64 rounding (convolutions over inputs of different lengths may sum in another order)
    torch.testing.assert_close(z_image[:, :, 0], z_video[:, :, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(ae.decode(z_image, chunk_frames=0)[:, :, 0], ae.decode(z_video, chunk_frames=0)[:, :, 0],
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("tf,chunk", [(4, 1), (4, 2), (4, 3), (2, 2), (1, 3)])
def test_chunked_equals_one_pass(tf, chunk):
    ae = tiny_ae(temporal_factor=tf)
    x = video(f=1 + 4 * tf)
    z = ae.encode(x, chunk_frames=0)
    z_chunked = ae.encode(x, chunk_frames=chunk)
    torch.testing.assert_close(z_chunked, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(ae.decode(z, chunk_frames=chunk), ae.decode(z, chunk_frames=0), rtol=0, atol=1e-12)


def test_joint_forward_encodes_each_segment_on_its_own():
    """A joint item (a 5-frame video + 2 images): latents = the video's 2 latent frames + one per image,
    each equal to encoding that part alone; the reconstruction likewise."""
    ae = tiny_ae()
    x = video(f=7)
    segments = torch.tensor([[0] * 5 + [1, 2]] * 2)
    assert segment_runs(segments, 7) == [5, 1, 1]
    out = ae(x, frame_segments=segments)
    assert out.mean.shape[2] == 4
    torch.testing.assert_close(out.mean[:, :, :2], ae.encode(x[:, :, :5], chunk_frames=0), rtol=0, atol=0)
    torch.testing.assert_close(out.mean[:, :, 3:], ae.encode(x[:, :, 6:], chunk_frames=0), rtol=0, atol=0)
    torch.testing.assert_close(out.recon[:, :, 5:6], ae.decode(out.mean[:, :, 2:3], chunk_frames=0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="same frame_segments layout"):
        ae(x, frame_segments=torch.tensor([[0] * 5 + [1, 2], [0] * 6 + [1]]))


def test_posterior_math():
    mean, logvar = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([0.0, 0.5, -1.0])
    assert torch.equal(kl_divergence(torch.zeros(3), torch.zeros(3)), torch.zeros(3))  # N(0, 1) vs itself
    expected = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar)
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    assert (kl_divergence(torch.randn(100), torch.randn(100)) >= 0).all()
    torch.testing.assert_close(posterior_sample(mean, logvar, torch.ones(3)), mean + (0.5 * logvar).exp())


def test_noise_samples_the_posterior_and_running_std_moves():
    ae = tiny_ae()
    x = video()
    base = ae(x)
    noise = torch.randn(base.mean.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sampled = ae(x, noise=noise)
    assert not torch.equal(sampled.recon, base.recon)
    assert ae.latent_std.item() == 1.0  # eval: no update
    ae.train()(x)
    assert ae.latent_std.item() != 1.0
    std = estimate_latent_std(ae.eval(), [x])
    torch.testing.assert_close(torch.tensor(std), ae.encode(x).std(unbiased=False).float(), rtol=1e-5, atol=0)


def test_depth_to_time_orders_frames():
    x = torch.arange(2 * 2 * 3).float().view(1, 4, 3, 1, 1)  # channels (c r) = (2, 2)
    y = depth_to_time(x, 2)
    assert y.shape == (1, 2, 6, 1, 1)
    assert y[0, 0, :, 0, 0].tolist() == [x[0, 0, 0, 0, 0], x[0, 1, 0, 0, 0], x[0, 0, 1, 0, 0], x[0, 1, 1, 0, 0],
                                         x[0, 0, 2, 0, 0], x[0, 1, 2, 0, 0]]
