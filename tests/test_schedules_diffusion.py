"""Tests of the schedules and the forward process against float64 references of the papers'
formulas, written here independently of diffax.schedules / diffax.diffusion."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion
from diffax import schedules

T = 200


def cosine_betas64(num_steps, off=0.008, max_beta=0.999):
  """Nichol & Dhariwal 2021 eq. 17 in float64: beta_t = 1 - f(t+1)/f(t), clipped."""
  f = lambda u: np.cos((u + off) / (1 + off) * np.pi / 2) ** 2
  u = np.arange(num_steps + 1) / num_steps
  return np.minimum(1 - f(u[1:]) / f(u[:-1]), max_beta)


def reference_arrays(betas):
  """DDPM's derived arrays in float64, by plain products (Ho et al. 2020, eq. 4 and 6-7)."""
  betas = np.asarray(betas, np.float64)
  ab = np.array([math.prod(1.0 - betas[:t + 1]) for t in range(len(betas))])
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  # 1 - prod(1 - beta) by inclusion-exclusion's stable form: accumulate the complement.
  one_minus_ab = np.empty_like(ab)
  acc = 0.0
  for t, b in enumerate(betas):
    acc = acc + b * (1.0 - acc)  # 1 - ab_t = (1 - ab_{t-1}) + beta_t ab_{t-1}
    one_minus_ab[t] = acc
  one_minus_ab_prev = np.concatenate([[0.0], one_minus_ab[:-1]])
  return dict(
      ab=ab, ab_prev=ab_prev, one_minus_ab=one_minus_ab,
      coef1=betas * np.sqrt(ab_prev) / one_minus_ab,
      coef2=one_minus_ab_prev * np.sqrt(1.0 - betas) / one_minus_ab,
      post_var=betas * one_minus_ab_prev / one_minus_ab)


def test_linear_endpoints_and_monotonicity():
  s = schedules.linear(1000)
  betas = np.asarray(s.betas)
  np.testing.assert_allclose(betas[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(np.diff(betas), (0.02 - 1e-4) / 999, rtol=1e-3)
  ab = np.asarray(s.alphas_cumprod)
  assert np.all(np.diff(ab) < 0) and np.all(np.diff(np.asarray(s.log_snr)) < 0)
  np.testing.assert_allclose(ab[-1], 4.04e-5, rtol=0.01)  # DDPM: x_T is nearly pure noise
  np.testing.assert_array_equal(np.asarray(s.alphas_cumprod_prev)[1:], ab[:-1])
  assert float(s.alphas_cumprod_prev[0]) == 1.0
  assert s.num_steps == 1000


def test_cosine_matches_closed_form_and_clips_betas():
  off = 0.008
  f = lambda u: np.cos((u + off) / (1 + off) * np.pi / 2) ** 2
  s = schedules.cosine(T)
  ab = np.asarray(s.alphas_cumprod, np.float64)
  expected = f(np.arange(1, T + 1) / T) / f(0.0)
  # Only the last beta is clipped (there the closed form reaches 0, beta would be 1).
  np.testing.assert_allclose(ab[:-1], expected[:-1], rtol=2e-5)
  betas = np.asarray(s.betas)
  assert betas.max() <= 0.999 + 1e-7 and np.isclose(betas[-1], 0.999)
  assert np.all(np.diff(betas) > 0)
  clipped = schedules.cosine(T, max_beta=0.1)
  cb = np.asarray(clipped.betas)
  assert np.isclose(cb.max(), 0.1) and np.sum(np.isclose(cb, 0.1)) > 1
  np.testing.assert_allclose(cb[:10], betas[:10], rtol=1e-6)  # unclipped entries unchanged


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_derived_arrays_match_float64_reference(name):
  if name == "linear":
    s, betas = schedules.linear(T, 1e-4, 0.02), np.linspace(1e-4, 0.02, T)
  else:
    s, betas = schedules.cosine(T), cosine_betas64(T)
  np.testing.assert_allclose(s.betas, betas, rtol=1e-6)
  ref = reference_arrays(betas)
  np.testing.assert_allclose(s.alphas_cumprod, ref["ab"], rtol=1e-6)
  # 1 - alpha_bar keeps full relative precision even at t = 0, where it is ~1e-4 (a float32
  # 1 - alpha_bar would keep ~3 digits).
  np.testing.assert_allclose(np.square(np.asarray(s.sqrt_one_minus_alphas_cumprod, np.float64)),
                             ref["one_minus_ab"], rtol=1e-6)
  np.testing.assert_allclose(s.sqrt_alphas_cumprod, np.sqrt(ref["ab"]), rtol=1e-6)
  np.testing.assert_allclose(s.log_snr, np.log(ref["ab"] / ref["one_minus_ab"]), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(s.posterior_variance, ref["post_var"], rtol=1e-5, atol=1e-30)
  np.testing.assert_allclose(s.posterior_log_variance_clipped[1:], np.log(ref["post_var"][1:]),
                             rtol=1e-5)
  assert float(s.posterior_log_variance_clipped[0]) == float(s.posterior_log_variance_clipped[1])


def test_first_step_precision_float64():
  s = schedules.linear(1000)
  # 1 - alpha_bar_0 = beta_0 exactly; 1 - alpha_bar_1 = b0 + b1 - b0 b1.
  b0, b1 = 1e-4, 1e-4 + (0.02 - 1e-4) / 999
  got = np.square(np.asarray(s.sqrt_one_minus_alphas_cumprod[:2], np.float64))
  np.testing.assert_allclose(got, [b0, b0 + b1 - b0 * b1], rtol=1e-6)


def test_q_posterior_matches_float64_reference():
  s = schedules.cosine(T)
  ref = reference_arrays(cosine_betas64(T))
  rng = np.random.default_rng(0)
  t = np.array([0, 1, 2, 10, 99, 150, T - 2, T - 1], np.int32)
  x0 = rng.uniform(-1, 1, (len(t), 3, 3, 2))
  x_t = rng.normal(size=x0.shape)
  mean, var, log_var = jax.jit(diffusion.q_posterior)(
      s, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  c = lambda a: a[t][:, None, None, None]
  np.testing.assert_allclose(mean, c(ref["coef1"]) * x0 + c(ref["coef2"]) * x_t, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(var, c(ref["post_var"]), rtol=1e-5, atol=1e-30)
  assert var.shape == (len(t), 1, 1, 1)
  np.testing.assert_allclose(log_var[1:], np.log(c(ref["post_var"])[1:]), rtol=1e-5)
  # The posterior is the Gaussian conditional of the joint q(x_{t-1}, x_t | x0) (eq. 6-7 derived):
  # x_{t-1} = sqrt(ab_prev) x0 + sqrt(1-ab_prev) e1, x_t = sqrt(a_t) x_{t-1} + sqrt(beta_t) e2.
  ab_prev, beta = c(ref["ab_prev"]), c(cosine_betas64(T))
  alpha_t = np.sqrt(1 - beta)
  cov = alpha_t * (1 - ab_prev)
  var_t = alpha_t**2 * (1 - ab_prev) + beta
  cond_mean = np.sqrt(ab_prev) * x0 + cov / var_t * (x_t - alpha_t * np.sqrt(ab_prev) * x0)
  np.testing.assert_allclose(mean, cond_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(var, (1 - ab_prev) - cov**2 / var_t, rtol=1e-4, atol=1e-9)


def test_q_sample_moments():
  s = schedules.cosine(T)
  n = 200_000
  t = jnp.array([0, 50, 120, T - 1], jnp.int32)
  x0 = jnp.array([0.7, -0.4, 1.0, 0.3]).reshape(4, 1)
  noise = jax.random.normal(jax.random.key(0), (4, n))
  x_t = np.asarray(jax.jit(diffusion.q_sample)(s, x0, t, noise), np.float64)
  ab = np.asarray(s.alphas_cumprod, np.float64)[np.asarray(t)]
  se = np.sqrt((1 - ab) / n)
  assert np.all(np.abs(x_t.mean(1) - np.sqrt(ab) * np.asarray(x0[:, 0])) < 5 * se + 1e-6)
  np.testing.assert_allclose(x_t.var(1), 1 - ab, rtol=5 * np.sqrt(2 / n), atol=1e-9)


def test_conversions_round_trip():
  s = schedules.cosine(T)
  k0, k1 = jax.random.split(jax.random.key(1))
  t = jnp.arange(0, T, 7)
  x0 = jax.random.uniform(k0, (t.shape[0], 4, 4, 1), minval=-1, maxval=1)
  eps = jax.random.normal(k1, x0.shape)
  alpha, sigma = diffusion.alpha_sigma(s, t, x0)
  x_t = diffusion.q_sample(s, x0, t, eps)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  v = diffusion.v_from_x0_eps(x0, eps, alpha, sigma)
  np.testing.assert_allclose(diffusion.x0_from_v(x_t, v, alpha, sigma), x0, atol=1e-5)
  np.testing.assert_allclose(diffusion.eps_from_v(x_t, v, alpha, sigma), eps, atol=1e-5)
  np.testing.assert_allclose(diffusion.x0_from_eps(x_t, eps, alpha, sigma), x0, atol=2e-4)
  np.testing.assert_allclose(diffusion.eps_from_x0(x_t, x0, alpha, sigma), eps, atol=2e-4)
  for prediction in diffusion.PREDICTIONS:
    output = diffusion.target(x0, eps, alpha, sigma, prediction)
    x0_hat, eps_hat = diffusion.x0_eps_from_output(output, x_t, alpha, sigma, prediction)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)
    np.testing.assert_allclose(alpha * x0_hat + sigma * eps_hat, x_t, atol=1e-5)
  np.testing.assert_array_equal(diffusion.target(x0, eps, alpha, sigma, "eps"), eps)
  np.testing.assert_array_equal(diffusion.target(x0, eps, alpha, sigma, "x0"), x0)


def test_extract_broadcasts():
  a = jnp.arange(10.0)
  x = jnp.zeros((3, 4, 5, 2))
  out = diffusion.extract(a, jnp.array([1, 5, 9]), x)
  assert out.shape == (3, 1, 1, 1)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [1.0, 5.0, 9.0])


def test_schedule_is_a_pytree():
  s = schedules.linear(50, beta_start=1e-3, beta_end=0.05)
  np.testing.assert_allclose(np.asarray(s.betas)[[0, -1]], [1e-3, 0.05], rtol=1e-6)
  # A Schedule passes through jit as a pytree of arrays; num_steps stays a static int.
  out = jax.jit(lambda s: (s.num_steps, s.alphas_cumprod * 2))(s)
  assert out[0] == 50


@pytest.mark.parametrize("bad", [
    lambda: schedules.linear(0),
    lambda: schedules.linear(10.5),
    lambda: schedules.linear(10, beta_start=0.02, beta_end=0.01),
    lambda: schedules.linear(10, beta_start=0.0),
    lambda: schedules.linear(10, beta_end=1.0),
    lambda: schedules.cosine(-3),
    lambda: schedules.cosine(10, s=-0.1),
    lambda: schedules.cosine(10, max_beta=0.0),
    lambda: schedules.cosine(10, max_beta=1.5),
    lambda: schedules.from_betas([]),
    lambda: schedules.from_betas([[0.1]]),
    lambda: schedules.from_betas([0.1, 0.0]),
    lambda: schedules.from_betas([0.1, np.nan]),
    lambda: diffusion.check_prediction("score"),
    lambda: diffusion.target(0.0, 0.0, 1.0, 0.0, "score"),
])
def test_bad_inputs_raise(bad):
  with pytest.raises(ValueError):
    bad()


@pytest.mark.parametrize("ours, name, kwargs", [
    (lambda: schedules.linear(1000), "linear", {}),
    (lambda: schedules.scaled_linear(1000), "scaled_linear",
     dict(beta_start=0.00085, beta_end=0.012)),
    (lambda: schedules.cosine(1000), "squaredcos_cap_v2", {}),
])
def test_schedules_equal_diffusers(ours, name, kwargs):
  """The schedules diffusers' checkpoints were trained with (DDPM, Stable Diffusion, iDDPM)."""
  import diffusers  # pylint: disable=g-import-not-at-top
  theirs = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs)
  np.testing.assert_allclose(ours().betas, theirs.betas.numpy(), rtol=1e-5, atol=1e-8)
  # diffusers takes the cumulative product in float32, diffax in float64: 1e-5 apart at t = T-1.
  np.testing.assert_allclose(ours().alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=1e-4)
