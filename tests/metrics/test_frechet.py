import numpy as np
import pytest
import scipy.linalg

from kinema.metrics.frechet import GaussianStats, frechet_distance, frechet_from_stats, trace_sqrt_product


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


@pytest.mark.parametrize("d,rank", [(3, None), (16, None), (32, 8), (64, 64)])
def test_trace_sqrt_product_matches_scipy_sqrtm(d, rank):
    rng = np.random.default_rng(d)
    s1, s2 = random_cov(rng, d, rank), random_cov(rng, d)
    ref = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("d", [4, 40])
def test_frechet_distance_matches_scipy_formula(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_closed_form_for_commuting_covariances():
    # diagonal covariances commute: d² = |mu1 - mu2|² + sum (sqrt(a) - sqrt(b))²
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_identity_symmetry_and_singular_covariances():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 50)), rng.normal(size=(12, 50)) + 0.5  # fewer samples than dimensions
    sx, sy = GaussianStats.from_features(x), GaussianStats.from_features(y)
    assert abs(frechet_from_stats(sx, sx)) < 1e-8
    d_xy, d_yx = frechet_from_stats(sx, sy), frechet_from_stats(sy, sx)
    assert np.isfinite(d_xy) and d_xy > 0 and d_xy == pytest.approx(d_yx, rel=1e-9)


def test_stats_save_load_round_trip(tmp_path):
    s = GaussianStats.from_features(np.random.default_rng(1).normal(size=(5, 3)))
    s.save(tmp_path / "s.npz")
    t = GaussianStats.load(tmp_path / "s.npz")
    assert t.n == 5 and np.array_equal(s.mu, t.mu) and np.array_equal(s.sigma, t.sigma)


def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"N >= 2"):
        GaussianStats.from_features(np.zeros((1, 4)))
