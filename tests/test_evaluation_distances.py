"""FD and KID against reference formulas (scipy, numpy, scikit-learn, pytorch-fid), and the
streaming float64 statistics against numpy's mean and covariance."""

import numpy as np
import pytest
from scipy import linalg
from sklearn.metrics import pairwise

from diffax import evaluation
from diffax.evaluation import distances


def features(n, dim, seed, shift=0.0):
  """Correlated, non-centred features, like a network's: one law per (dim, shift), the draw
  from `seed`."""
  mix = np.random.default_rng(dim).normal(size=(dim, dim)) / np.sqrt(dim)
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, dim)) @ mix + 0.5 + shift).astype(np.float32)


def scipy_frechet(mu1, sigma1, mu2, sigma2):
  """The textbook formula with scipy's matrix square root (as pytorch-fid computes it)."""
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  covmean = covmean.real
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def test_feature_stats_are_numpys_mean_and_covariance_in_float64():
  x = features(300, 12, 0)
  mu, sigma = evaluation.feature_stats(x)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10,
                             atol=1e-12)


def test_streaming_and_merged_shares_equal_the_whole():
  """Uneven batches streamed in, or two processes' shares merged, give the whole set's
  statistics: the statistics are combined exactly (up to float64 rounding)."""
  x = features(257, 10, 1)
  whole = distances.FeatureStats.of(x)
  stats = distances.FeatureStats.empty(10)
  for start, stop in [(0, 1), (1, 64), (64, 200), (200, 257)]:
    stats = stats.update(x[start:stop])
  shares = distances.FeatureStats.of(x[::2]).merge(distances.FeatureStats.of(x[1::2]))
  for got in (stats, shares):
    assert got.count == 257
    np.testing.assert_allclose(got.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(got.scatter, whole.scatter, rtol=1e-10, atol=1e-9)


def test_frechet_distance_matches_scipy_and_pytorch_fid():
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  a, b = features(400, 16, 2), features(400, 16, 3, shift=0.3)
  (mu1, s1), (mu2, s2) = evaluation.feature_stats(a), evaluation.feature_stats(b)
  fd = evaluation.frechet_distance((mu1, s1), (mu2, s2))
  np.testing.assert_allclose(fd, scipy_frechet(mu1, s1, mu2, s2), rtol=1e-8)
  np.testing.assert_allclose(fd, fid_score.calculate_frechet_distance(mu1, s1, mu2, s2),
                             rtol=1e-8)
  assert evaluation.frechet_distance((mu1, s1), (mu1, s1)) == pytest.approx(0.0, abs=1e-9)
  # FeatureStats are accepted as they are.
  assert evaluation.frechet_distance(distances.FeatureStats.of(a),
                                     distances.FeatureStats.of(b)) == pytest.approx(fd)


def test_frechet_distance_of_gaussians_in_closed_form_even_when_singular():
  """Between N(m1, diag(a)) and N(m2, diag(b)) it is |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2;
  with zero variances (a singular covariance, as with fewer samples than dimensions) too."""
  rng = np.random.default_rng(4)
  m1, m2 = rng.normal(size=8), rng.normal(size=8)
  a, b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
  a[:3] = 0.0
  rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]  # the same rotation of both
  s1, s2 = rotation @ np.diag(a) @ rotation.T, rotation @ np.diag(b) @ rotation.T
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = evaluation.frechet_distance((rotation @ m1, s1), (rotation @ m2, s2))
  np.testing.assert_allclose(got, expected, rtol=1e-7)  # sqrt of rounding-size eigenvalues


def reference_mmd2(x, y):
  """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with scikit-learn's polynomial kernel."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  k = lambda u, v: pairwise.polynomial_kernel(u, v, degree=3, gamma=1.0 / x.shape[1], coef0=1)
  m, n = len(x), len(y)
  kxx, kyy = k(x, x), k(y, y)
  np.fill_diagonal(kxx, 0.0)
  np.fill_diagonal(kyy, 0.0)
  return kxx.sum() / (m * (m - 1)) + kyy.sum() / (n * (n - 1)) - 2 * k(x, y).sum() / (m * n)


def test_kernel_distance_matches_the_unbiased_mmd_formula():
  x, y = features(120, 16, 5), features(90, 16, 6, shift=0.2)
  np.testing.assert_allclose(evaluation.kernel_distance(x, y), reference_mmd2(x, y),
                             rtol=1e-10)
  # Subsets: each draws rng.choice(m, s) then rng.choice(n, s) from default_rng(seed).
  rng = np.random.default_rng(7)
  expected = []
  for _ in range(3):
    ix, iy = rng.choice(120, 50, replace=False), rng.choice(90, 50, replace=False)
    expected.append(reference_mmd2(x[ix], y[iy]))
  got = evaluation.kernel_distance(x, y, subset_size=50, num_subsets=3, seed=7)
  np.testing.assert_allclose(got, np.mean(expected), rtol=1e-10)


def test_kernel_distance_is_unbiased_for_one_law_and_grows_with_a_shift():
  """Between draws of one law its mean is 0 within sampling error (the biased V-statistic,
  with the diagonal kept, is far above); a shifted law is far above both."""
  pairs = [(features(100, 8, 100 + i), features(100, 8, 200 + i)) for i in range(40)]
  same = np.array([evaluation.kernel_distance(x, y) for x, y in pairs])
  gamma = 1.0 / 8
  k = lambda u, v: (gamma * u.astype(np.float64) @ v.T.astype(np.float64) + 1) ** 3
  biased = np.array([k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean() for x, y in pairs])
  standard_error = same.std(ddof=1) / np.sqrt(len(same))
  assert abs(same.mean()) < 3 * standard_error, (same.mean(), standard_error)
  assert biased.mean() > same.mean() + 10 * standard_error
  shifted = evaluation.kernel_distance(features(100, 8, 30), features(100, 8, 31, shift=0.5))
  assert shifted > 5 * biased.mean()


def test_bad_shapes_are_clear_errors():
  with pytest.raises(ValueError, match="same D"):
    evaluation.kernel_distance(np.zeros((5, 3)), np.zeros((5, 4)))
  with pytest.raises(ValueError, match="16-d and 8-d"):
    evaluation.frechet_distance((np.zeros(16), np.eye(16)), (np.zeros(8), np.eye(8)))
  with pytest.raises(ValueError, match="mu must be"):
    evaluation.frechet_distance((np.zeros(4), np.eye(3)), (np.zeros(4), np.eye(4)))
  with pytest.raises(ValueError, match="at least 2"):
    evaluation.feature_stats(np.zeros((1, 4)))
