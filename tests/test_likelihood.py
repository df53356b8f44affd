"""Bits per dimension on a case whose bound and true likelihood are known in closed form.

The data: 8-bit images whose pixels are independent draws of a Gaussian N(MU, S^2) rounded to
the 256 levels of [-1, 1] (the outer levels take the tails): its true NLL is the entropy of that
discrete law. The model: the exact denoiser of the Gaussian, E[x0 | x_t], which is linear in
x_t. For a linear denoiser every term of DDPM's bound has a closed form given the data's first
two moments (the reverse-step KLs), and the decoder term is a 1-D integral (Gauss-Hermite).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffax import evaluation
from diffax import schedules
from diffax.evaluation import likelihood

MU, S = 0.1, 0.3
GRID = np.arange(256) / 127.5 - 1.0


def data_law():
  """The probabilities of the 256 levels of the discretized N(MU, S^2)."""
  edges = np.concatenate([[-np.inf], GRID[:-1] + 1 / 255, [np.inf]])
  return np.diff(stats.norm.cdf((edges - MU) / S))


def gaussian_denoiser(schedule):
  """E[eps | x_t] for x0 ~ N(MU, S^2): the exact model of the continuous law."""
  ab_table = schedule.alphas_cumprod

  def model_fn(x_t, t):
    ab = ab_table[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    return sigma * (x_t - alpha * MU) / (alpha**2 * S**2 + sigma**2)

  return model_fn


def closed_form_bound(schedule, variance):
  """DDPM's bound per pixel, in bits, for the linear denoiser x0_hat = MU + k (x_t - alpha MU)."""
  p = data_law()
  ab = np.asarray(schedule.alphas_cumprod, np.float64)
  betas = np.asarray(schedule.betas, np.float64)
  post_var = np.asarray(schedule.posterior_variance, np.float64)
  coef1 = np.asarray(schedule.posterior_mean_coef1, np.float64)
  second_moment = (p * GRID**2).sum()
  spread = (p * (GRID - MU) ** 2).sum()  # E[(x0 - MU)^2]
  prior = 0.5 * (ab[-1] * second_moment - ab[-1] - np.log1p(-ab[-1]))
  alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
  k = alpha * S**2 / (alpha**2 * S**2 + sigma**2)
  error = (1 - k * alpha) ** 2 * spread + k**2 * sigma**2  # E[(x0 - x0_hat)^2]
  model_var = post_var if variance == "small" else np.concatenate([post_var[1:2], betas[1:]])
  kls = (0.5 * (np.log(model_var[1:] / post_var[1:]) + post_var[1:] / model_var[1:] - 1)
         + coef1[1:] ** 2 * error[1:] / (2 * model_var[1:]))
  nodes, weights = np.polynomial.hermite_e.hermegauss(80)
  weights = weights / weights.sum()
  scale = np.sqrt(post_var[1])
  decoder = 0.0
  for j, x0 in enumerate(GRID):
    mean = MU + k[0] * (alpha[0] * x0 + sigma[0] * nodes - alpha[0] * MU)
    lo = -np.inf if j == 0 else x0 - 1 / 255
    hi = np.inf if j == 255 else x0 + 1 / 255
    prob = stats.norm.cdf((hi - mean) / scale) - stats.norm.cdf((lo - mean) / scale)
    # Far from its level a bin's mass underflows; those nodes weigh p[j] ~ 0.
    decoder += p[j] * (weights * -np.log(np.maximum(prob, 1e-300))).sum()
  return (prior + kls.sum() + decoder) / np.log(2)


def true_nll_bits():
  p = data_law()
  return float(-(p * np.log2(p)).sum())


@functools.partial(jax.jit, static_argnames=("variance",))
def bits_per_image(schedule, x0, key, variance):
  terms = likelihood.vlb_terms(gaussian_denoiser(schedule), schedule, x0, key,
                               variance=variance, clip_x0=False)
  return evaluation.bits_per_dim(terms["total"], int(np.prod(x0.shape[1:])))


def monte_carlo_bound(schedule, variance, num_images=256, shape=(8, 8, 1), seed=0):
  """The library's estimate of the bound on data of the law: (mean, standard error)."""
  levels = np.random.default_rng(seed).choice(256, size=(num_images, *shape), p=data_law())
  x0 = jnp.asarray(GRID[levels], jnp.float32)
  bits = np.asarray(bits_per_image(schedule, x0, jax.random.key(seed), variance), np.float64)
  return bits.mean(), bits.std(ddof=1) / np.sqrt(num_images)


@pytest.mark.parametrize("variance", ["large", "small"])
def test_bound_equals_its_closed_form_and_lies_above_the_true_nll(variance):
  schedule = schedules.cosine(1000)
  estimate, standard_error = monte_carlo_bound(schedule, variance)
  exact = closed_form_bound(schedule, variance)
  assert abs(estimate - exact) < 4 * standard_error, (estimate, exact, standard_error)
  assert standard_error < 0.02
  truth = true_nll_bits()  # 7.297 bits/dim
  assert estimate - 4 * standard_error > truth
  # Measured: "large" 0.086 bits/dim above the true NLL, "small" 0.656.
  gap = {"large": (0.07, 0.1), "small": (0.6, 0.7)}[variance]
  assert gap[0] < exact - truth < gap[1]


def test_the_closed_form_gap_closes_as_the_steps_grow():
  """The gap is the discretization of the reverse process (the model is exact): 0.119,
  0.086 and 0.013 bits/dim at T = 250, 1000, 4000 (the library's estimate matches the closed
  form at T = 1000 above)."""
  gaps = [closed_form_bound(schedules.cosine(T), "large") - true_nll_bits()
          for T in (250, 1000, 4000)]
  np.testing.assert_allclose(gaps, [0.119, 0.086, 0.013], atol=2e-3)


def test_discretized_gaussian_is_a_distribution_over_the_256_levels():
  x = jnp.asarray(GRID, jnp.float32)[:, None]  # [256, 1]
  mean = jnp.asarray([-1.2, -0.3, 0.0, 0.7, 1.0])[None]
  log_scale = jnp.log(jnp.asarray([0.01, 0.1, 0.5, 0.003, 2.0]))[None]
  log_p = likelihood.discretized_gaussian_log_likelihood(x, mean, log_scale)
  np.testing.assert_allclose(jnp.exp(log_p).sum(axis=0), 1.0, rtol=1e-5)
  # An inner bin against scipy, including a far tail (log-probabilities of about -1e4).
  j = 200
  for m, s in [(0.3, 0.05), (-0.9, 0.01)]:
    expected = np.log(stats.norm.cdf((GRID[j] + 1 / 255 - m) / s)
                      - stats.norm.cdf((GRID[j] - 1 / 255 - m) / s)) if m > 0 else (
                          stats.norm.logsf((GRID[j] - 1 / 255 - m) / s)
                          + np.log1p(-np.exp(stats.norm.logsf((GRID[j] + 1 / 255 - m) / s)
                                             - stats.norm.logsf((GRID[j] - 1 / 255 - m) / s))))
    got = likelihood.discretized_gaussian_log_likelihood(jnp.float32(GRID[j]), m, np.log(s))
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_terms_of_an_image_do_not_depend_on_its_batch():
  schedule = schedules.cosine(20)
  levels = np.random.default_rng(1).choice(256, size=(4, 2, 2, 1), p=data_law())
  x0 = jnp.asarray(GRID[levels], jnp.float32)
  run = jax.jit(lambda x, ids: likelihood.vlb_terms(gaussian_denoiser(schedule), schedule, x,
                                                    jax.random.key(3), ids=ids)["total"])
  whole = run(x0, jnp.arange(4))
  part = run(x0[2:], jnp.arange(2, 4))
  np.testing.assert_allclose(part, whole[2:], rtol=1e-6)


def test_unknown_variance_is_a_clear_error():
  with pytest.raises(ValueError, match=r"unknown variance 'fixed'.*\['large', 'small'\]"):
    likelihood.reverse_log_variance(schedules.cosine(10), "fixed")
