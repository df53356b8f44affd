"""Distances between two sets of features: the Frechet distance (FID) and the kernel distance
(KID), with the feature statistics they need, in float64 on the host.

  stats = FeatureStats.empty(2048)
  for batch in batches:                       # streaming: the features are never all held
    stats = stats.update(features(batch))
  mu, sigma = stats.mean_cov()                # or feature_stats(all_features)
  fd = frechet_distance((mu, sigma), (mu_ref, sigma_ref))
  kid = kernel_distance(feats, feats_ref)     # needs the features themselves

`FeatureStats` is a count, a mean and a scatter matrix; two of them (e.g. the shares of two
hosts) merge exactly into the statistics of the union (Chan et al.'s pairwise update), so the
order of batches and how they are split over processes changes only float64 rounding.
"""

from typing import NamedTuple, Optional

import numpy as np


class FeatureStats(NamedTuple):
  """Running statistics of a set of feature vectors, float64.

  Attributes:
    count: how many vectors.
    mean: `f64[D]`, their mean.
    scatter: `f64[D, D]`, the sum of (x - mean)(x - mean)^T.
  """
  count: int
  mean: np.ndarray
  scatter: np.ndarray

  @classmethod
  def empty(cls, dim: int) -> "FeatureStats":
    return cls(0, np.zeros((dim,), np.float64), np.zeros((dim, dim), np.float64))

  @classmethod
  def of(cls, features) -> "FeatureStats":
    """The statistics of `[N, D]` features."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f"features must be [N, D], got shape {x.shape}")
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
    centered = x - mean
    return cls(len(x), mean, centered.T @ centered)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    """The statistics of the union of both sets (Chan, Golub & LeVeque 1979)."""
    if self.mean.shape != other.mean.shape:
      raise ValueError(f"cannot merge statistics of {self.mean.shape[0]}-d and "
                       f"{other.mean.shape[0]}-d features")
    n = self.count + other.count
    if not other.count:
      return self
    if not self.count:
      return other
    delta = other.mean - self.mean
    mean = self.mean + delta * (other.count / n)
    scatter = self.scatter + other.scatter + np.outer(delta, delta) * (
        self.count * other.count / n)
    return FeatureStats(n, mean, scatter)

  def update(self, features) -> "FeatureStats":
    """These statistics with the `[B, D]` batch `features` added."""
    return self.merge(FeatureStats.of(features))

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    """`(mu f64[D], sigma f64[D, D])`: the mean and the unbiased covariance (as `np.cov`)."""
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.count}")
    return self.mean, self.scatter / (self.count - 1)


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
  """`(mu, sigma)` of `[N, D]` features in float64: their mean and unbiased covariance (the
  statistics FID compares; pytorch-fid's `np.mean(.., axis=0)`, `np.cov(.., rowvar=False)`)."""
  return FeatureStats.of(features).mean_cov()


def _as_stats(stats, name: str) -> tuple[np.ndarray, np.ndarray]:
  if isinstance(stats, FeatureStats):
    return stats.mean_cov()
  try:
    mu, sigma = stats
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be (mu, sigma) or a FeatureStats") from None
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise ValueError(f"{name}: mu must be [D] and sigma [D, D], got {mu.shape} and "
                     f"{sigma.shape}")
  return mu, sigma


def frechet_distance(stats1, stats2) -> float:
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982):

    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)),

  FID when the statistics are of Inception pool3 features (Heusel et al. 2017).

  The trace of the matrix square root is computed from the eigenvalues of the symmetric PSD
  matrix sigma1^(1/2) sigma2 sigma1^(1/2), which is similar to sigma1 sigma2, so singular
  covariances (fewer samples than dimensions) need no offset and no complex arithmetic.

  Args:
    stats1, stats2: `(mu [D], sigma [D, D])` pairs or `FeatureStats`.

  Returns:
    The distance, a float >= 0.
  """
  mu1, sigma1 = _as_stats(stats1, "stats1")
  mu2, sigma2 = _as_stats(stats2, "stats2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"the statistics are of {mu1.shape[0]}-d and {mu2.shape[0]}-d features; "
                     f"compare features of the same network")
  w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
  root1 = (v * np.sqrt(np.maximum(w, 0.0))) @ v.T  # sigma1^(1/2)
  middle = root1 @ sigma2 @ root1
  eig = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sqrt(np.maximum(eig, 0.0)).sum()
  diff = mu1 - mu2
  fd = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  return float(max(fd, 0.0))


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, *, degree: int = 3,
                  gamma: Optional[float] = None, coef0: float = 1.0) -> float:
  """The unbiased estimate of MMD^2 between the sets `x [m, D]` and `y [n, D]` with the
  polynomial kernel k(a, b) = (gamma a.b + coef0)^degree, gamma = 1/D by default
  (Gretton et al. 2012, eq. 3):

    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
      - 2/(mn) sum_{i,j} k(x_i, y_j).
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n = len(x), len(y)
  gamma = 1.0 / x.shape[1] if gamma is None else gamma
  kernel = lambda a, b: (gamma * (a @ b.T) + coef0) ** degree
  kxx, kyy = kernel(x, x), kernel(y, y)
  off_diagonal = lambda k: k.sum() - np.trace(k)
  return float(off_diagonal(kxx) / (m * (m - 1)) + off_diagonal(kyy) / (n * (n - 1))
               - 2.0 * kernel(x, y).mean())


def kernel_distance(features1, features2, *, subset_size: int = 1000, num_subsets: int = 100,
                    seed: int = 0, degree: int = 3, gamma: Optional[float] = None,
                    coef0: float = 1.0) -> float:
  """The kernel distance (KID, Binkowski et al. 2018): the unbiased polynomial-kernel MMD^2
  (`mmd2_unbiased`, k(a, b) = (a.b / D + 1)^3), averaged over random subsets.

  Unlike the Frechet distance, its estimate has no bias that depends on the number of samples,
  so numbers from different sample counts compare.

  Args:
    features1: `[m, D]`.
    features2: `[n, D]`.
    subset_size: the size of each subset; when both sets have at most this many vectors, the
      estimate uses the whole sets once (no randomness).
    num_subsets: how many subsets to average (KID's default 100).
    seed: subset k draws `rng.choice(m, s, replace=False)` then `rng.choice(n, s, ...)` from
      `rng = np.random.default_rng(seed)`, s = min(subset_size, m, n).
    degree, gamma, coef0: the polynomial kernel (gamma None: 1/D).

  Returns:
    The mean MMD^2 estimate (it can be slightly negative when the sets are alike).
  """
  x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"features must be [m, D] and [n, D] with the same D, got {x.shape} and "
                     f"{y.shape}")
  m, n = len(x), len(y)
  if min(m, n) < 2:
    raise ValueError(f"the kernel distance needs at least 2 vectors per set, got {m} and {n}")
  kwargs = dict(degree=degree, gamma=gamma, coef0=coef0)
  if max(m, n) <= subset_size:
    return mmd2_unbiased(x, y, **kwargs)
  size = min(subset_size, m, n)
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    ix = rng.choice(m, size, replace=False)
    iy = rng.choice(n, size, replace=False)
    estimates.append(mmd2_unbiased(x[ix], y[iy], **kwargs))
  return float(np.mean(estimates))
