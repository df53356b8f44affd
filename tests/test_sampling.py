"""Tests of the samplers against the math: step-level identities, and whole jitted samplers run on
a Gaussian data law whose exact noise predictor is known, so the law of the discrete chain can be
computed in closed form (float64) and compared with the samples."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion
from diffax import sampling
from diffax import schedules
from diffax.sampling import loop
from diffax.sampling import spacing
from conftest import assert_law

T = 100
S = schedules.cosine(T)
AB = np.asarray(S.alphas_cumprod, np.float64)  # the float32 alpha-bars the samplers use
S_FINE = schedules.cosine(1000)  # for convergence to the data law

# Data law: independent N(MU, STD^2) per pixel of a [2, 2, 1] image.
MU = np.array([0.5, -1.0, 0.0, 2.0]).reshape(2, 2, 1)
STD = np.array([0.05, 0.5, 1.0, 0.3]).reshape(2, 2, 1)
N = 32768
SHAPE = (N, 2, 2, 1)


def exact_predictor(s, prediction):
  """E[eps | x_t] (or E[x0 | x_t], or v) for x0 ~ N(MU, STD^2): x_t ~ N(alpha MU, alpha^2 STD^2 +
  sigma^2), jointly Gaussian with eps, so E[eps | x_t] = sigma (x_t - alpha MU) / var_t."""
  mu, std2 = jnp.asarray(MU, jnp.float32), jnp.asarray(STD**2, jnp.float32)

  def model_fn(x_t, t):
    ab = s.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
    var = alpha**2 * std2 + sigma**2
    eps = sigma * (x_t - alpha * mu) / var
    x0 = mu + alpha * std2 * (x_t - alpha * mu) / var
    return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[prediction]

  return model_fn


# Module-level function objects, so the jitted samplers compile once per setting.
PREDICTORS = {p: exact_predictor(S, p) for p in diffusion.PREDICTIONS}
FINE_PREDICTOR = exact_predictor(S_FINE, "eps")


def chain_law(ts, sampler, eta=0.0, ab=AB):
  """Exact mean and variance of the discrete chain's output, float64 (DDPM eq. 6-7 respaced /
  DDIM eq. 12). With the exact predictor every step is affine in x plus Gaussian noise:
  x' = A x + B + c z, so from x_T ~ N(0, 1): m' = A m + B, v' = A^2 v + c^2."""
  m, v = np.zeros_like(MU), np.ones_like(MU)
  for i, t in enumerate(ts):
    a_t = ab[t]
    a_p = ab[ts[i + 1]] if i + 1 < len(ts) else 1.0
    alpha, sigma = np.sqrt(a_t), np.sqrt(1 - a_t)
    k = sigma / (alpha**2 * STD**2 + sigma**2)
    eps_a, eps_b = k, -k * alpha * MU            # eps_hat = eps_a x + eps_b
    x0_a, x0_b = (1 - sigma * k) / alpha, sigma * k * MU   # x0_hat = (x - sigma eps_hat) / alpha
    if sampler == "ddpm":
      beta = 1 - a_t / a_p
      c1, c2 = np.sqrt(a_p) * beta / (1 - a_t), np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)
      a, b, c2_noise = c1 * x0_a + c2, c1 * x0_b, beta * (1 - a_p) / (1 - a_t)
    else:
      sig = eta * np.sqrt((1 - a_p) / (1 - a_t)) * np.sqrt(1 - a_t / a_p)
      d = np.sqrt(1 - a_p - sig**2)
      a, b, c2_noise = np.sqrt(a_p) * x0_a + d * eps_a, np.sqrt(a_p) * x0_b + d * eps_b, sig**2
    m, v = a * m + b, a**2 * v + c2_noise
  return m, v


def draw(sampler, num_steps=None, eta=0.0, prediction="eps", seed=0, **kw):
  return sampling.sample(PREDICTORS[prediction], S, SHAPE, jax.random.key(seed), sampler=sampler,
                         num_steps=num_steps, eta=eta, prediction=prediction, **kw)


def assert_close(actual, expected, tol):
  """|actual - expected| <= tol (1 + |expected|): relative for large values, absolute near 0."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  np.testing.assert_array_less(np.abs(actual - expected), tol * (1 + np.abs(expected)))


# ---------------------------------------------------------------------------------------------
# Step level.

STEP_T = jnp.arange(T, dtype=jnp.int32)  # one example per timestep


def step_inputs(seed=0, scale=1.0):
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  x_t = jax.random.normal(k0, (T, 3, 2, 1))
  output = scale * jax.random.normal(k1, x_t.shape)
  noise = jax.random.normal(k2, x_t.shape)
  return output, x_t, noise


@functools.partial(jax.jit, static_argnames=("prediction", "clip_x0"))
def jit_ddpm(output, t, x_t, noise, prediction="eps", clip_x0=False):
  return sampling.ddpm_step(S, output, t, x_t, noise, prediction=prediction, clip_x0=clip_x0)


@functools.partial(jax.jit, static_argnames=("prediction", "clip_x0"))
def jit_ddim(output, t, t_prev, x_t, noise, eta, prediction="eps", clip_x0=False):
  return sampling.ddim_step(S, output, t, t_prev, x_t, noise, eta=eta, prediction=prediction,
                            clip_x0=clip_x0)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_ddpm_step_is_q_posterior_at_x0_estimate(prediction):
  output, x_t, noise = step_inputs()
  alpha, sigma = diffusion.alpha_sigma(S, STEP_T, x_t)
  x0_hat, _ = diffusion.x0_eps_from_output(output, x_t, alpha, sigma, prediction)
  mean, var, _ = diffusion.q_posterior(S, x0_hat, x_t, STEP_T)
  got_mean = jit_ddpm(output, STEP_T, x_t, jnp.zeros_like(noise), prediction)
  got = jit_ddpm(output, STEP_T, x_t, noise, prediction)
  scale = 1.0 + np.abs(np.asarray(x0_hat))  # x0_hat = x_t / alpha is large at high t
  np.testing.assert_array_less(np.abs(got_mean - mean), 2e-3 * scale)
  # The noise enters with std sqrt(beta-tilde_t) (float32 alpha-bar ratios: ~1e-3 relative).
  std = (got - got_mean) / noise
  np.testing.assert_allclose(std, jnp.broadcast_to(jnp.sqrt(var), std.shape), rtol=2e-3,
                             atol=1e-6)


def test_ddpm_step_adds_no_noise_at_t0():
  output, x_t, noise = step_inputs()
  t0 = jnp.zeros((T,), jnp.int32)
  a = jit_ddpm(output, t0, x_t, noise)
  b = jit_ddpm(output, t0, x_t, -3.0 * noise)
  np.testing.assert_array_equal(a, b)
  alpha, sigma = diffusion.alpha_sigma(S, t0, x_t)
  np.testing.assert_allclose(a, diffusion.x0_from_eps(x_t, output, alpha, sigma), rtol=1e-4,
                             atol=1e-4)
  # ...and at every t > 0 the noise does move the sample.
  moved = jit_ddpm(output, STEP_T, x_t, noise) - jit_ddpm(output, STEP_T, x_t, -3.0 * noise)
  assert np.all(np.abs(np.asarray(moved[1:])) > 0)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_ddim_eta1_step_is_ddpm_step(prediction):
  """eta = 1 gives DDPM's posterior: the same mean and the same noise std, so the same map."""
  output, x_t, noise = step_inputs(seed=1)
  ddpm = jit_ddpm(output, STEP_T, x_t, noise, prediction)
  ddim = jit_ddim(output, STEP_T, STEP_T - 1, x_t, noise, 1.0, prediction)
  assert_close(ddim, ddpm, 1e-3)
  ddpm_mean = jit_ddpm(output, STEP_T, x_t, 0 * noise, prediction)
  ddim_mean = jit_ddim(output, STEP_T, STEP_T - 1, x_t, 0 * noise, 1.0, prediction)
  assert_close(ddim_mean, ddpm_mean, 1e-3)
  # ...while eta = 0 at the same inputs is a different (deterministic) step.
  assert np.abs(np.asarray(jit_ddim(output, STEP_T, STEP_T - 1, x_t, noise, 0.0, prediction)
                           - ddim)[1:]).min() > 0


def test_ddim_step_formula_and_determinism():
  output, x_t, noise = step_inputs(seed=2)
  t, t_prev = STEP_T[5:], STEP_T[:-5]  # jumps of 5 steps
  ab, ab_prev = AB[t][:, None, None, None], AB[t_prev][:, None, None, None]
  x0 = (np.asarray(x_t[5:]) - np.sqrt(1 - ab) * output[5:]) / np.sqrt(ab)
  expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * output[5:]  # eq. 12, sigma = 0
  got = jit_ddim(output[5:], t, t_prev, x_t[5:], noise[5:], 0.0)
  assert_close(got, expected, 1e-4)
  np.testing.assert_array_equal(got, jit_ddim(output[5:], t, t_prev, x_t[5:], 7 * noise[5:], 0.0))
  # t_prev = -1: alpha-bar 1, the step returns the x0 estimate.
  last = jit_ddim(output, STEP_T, -jnp.ones_like(STEP_T), x_t, noise, 0.0)
  x0_all = (np.asarray(x_t) - np.sqrt(1 - AB)[:, None, None, None] * output) / np.sqrt(AB)[
      :, None, None, None]
  assert_close(last, x0_all, 1e-4)


def test_clip_x0_keeps_the_x0_estimate_in_range():
  output, x_t, noise = step_inputs(seed=3, scale=5.0)  # x0 estimates far outside [-1, 1]
  t0 = jnp.zeros((T,), jnp.int32)
  for got in (jit_ddpm(output, t0, x_t, noise, clip_x0=True),
              jit_ddim(output, STEP_T, -jnp.ones_like(STEP_T), x_t, noise, 0.0, clip_x0=True)):
    assert np.abs(np.asarray(got)).max() <= 1.0 and np.abs(np.asarray(got)).max() == 1.0
  # At t > 0 the x0 estimate is clipped and eps recomputed from it (x_t stays consistent).
  t, t_prev = STEP_T[1:], STEP_T[:-1]
  ab, ab_prev = AB[t][:, None, None, None], AB[t_prev][:, None, None, None]
  xt = np.asarray(x_t[1:], np.float64)
  x0 = np.clip((xt - np.sqrt(1 - ab) * output[1:]) / np.sqrt(ab), -1, 1)
  eps = (xt - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
  expected = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
  got = jit_ddim(output[1:], t, t_prev, x_t[1:], noise[1:], 0.0, clip_x0=True)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
  unclipped = jit_ddim(output[1:], t, t_prev, x_t[1:], noise[1:], 0.0)
  assert np.abs(np.asarray(got - unclipped)).max() > 0.1


# ---------------------------------------------------------------------------------------------
# Whole samplers on the Gaussian law.

@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_all_steps_follow_the_exact_chain(sampler):
  m, v = chain_law(np.arange(T)[::-1], sampler)
  assert_law(draw(sampler), m, v)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_all_steps_recover_the_data_law(sampler):
  """With T = 1000 the chain's law is the data law up to a small discretization error, largest
  for the narrowest pixel (std 0.05 against a last-step noise level sqrt(1 - ab_0) = 0.006)."""
  ab = np.asarray(S_FINE.alphas_cumprod, np.float64)
  m, v = chain_law(np.arange(1000)[::-1], sampler, ab=ab)
  np.testing.assert_allclose(m, MU, atol=1e-3)
  rtol = np.array([0.05, 0.01, 0.01, 0.01]).reshape(STD.shape)
  np.testing.assert_array_less(np.abs(np.sqrt(v) - STD), rtol * STD)
  n = 16384
  x = np.asarray(sampling.sample(FINE_PREDICTOR, S_FINE, (n,) + MU.shape, jax.random.key(6),
                                 sampler=sampler), np.float64)
  assert_law(x, m, v)
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * STD / np.sqrt(n) + 1e-3)
  np.testing.assert_allclose(x.std(0), STD, rtol=0.05)


def test_respaced_ddpm_follows_its_chain():
  ts = spacing.timesteps(T, 20)
  m, v = chain_law(ts, "ddpm")
  assert_law(draw("ddpm", num_steps=20), m, v)


@pytest.mark.parametrize("num_steps,spacing_name", [(10, "linspace"), (5, "quadratic")])
def test_ddim_few_steps_follows_its_affine_chain(num_steps, spacing_name):
  ts = spacing.timesteps(T, num_steps, spacing_name)
  m, v = chain_law(ts, "ddim")
  x = draw("ddim", num_steps=num_steps, spacing=spacing_name)
  assert_law(x, m, v)
  # Deterministic DDIM is an affine map of x_T per pixel: check it exactly, not just in law.
  x_T = loop.initial_noise(jax.random.key(0), SHAPE)
  z = np.asarray(x_T, np.float64)
  np.testing.assert_allclose(np.asarray(x), m + np.sqrt(v) * z, rtol=1e-3, atol=2e-3)


def test_ddim_eta1_has_the_law_of_ddpm():
  ts = spacing.timesteps(T, 20)
  m, v = chain_law(ts, "ddpm")
  m1, v1 = chain_law(ts, "ddim", eta=1.0)
  np.testing.assert_allclose(m1, m, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(v1, v, rtol=1e-10)
  x = draw("ddim", num_steps=20, eta=1.0)
  assert_law(x, m, v)
  # eta is a traced argument: eta = 0.5 reuses the same compiled sampler and lands in between.
  m5, v5 = chain_law(ts, "ddim", eta=0.5)
  assert_law(draw("ddim", num_steps=20, eta=0.5), m5, v5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_predictions_give_the_same_samples(sampler):
  ref = np.asarray(draw(sampler, num_steps=10, seed=4))
  for prediction in ("x0", "v"):
    np.testing.assert_allclose(draw(sampler, num_steps=10, prediction=prediction, seed=4), ref,
                               rtol=1e-3, atol=1e-3)


def test_clip_x0_sampler_output_in_range():
  # Pixel (1, 1) has the law N(2, 0.3^2), outside the data range the clipping assumes.
  assert np.mean(np.asarray(draw("ddim", num_steps=10))[:, 1, 1, 0] > 1.0) > 0.99
  x = np.asarray(draw("ddim", num_steps=10, clip_x0=True))
  assert np.abs(x).max() <= 1.0 and x[:, 1, 1, 0].mean() > 0.9


def test_padded_table_skips_inactive_steps():
  """A table padded past num_active gives the same samples as the unpadded one."""
  ts = spacing.timesteps(T, 10)
  sampler = sampling.SAMPLERS["ddpm"](PREDICTORS["eps"], prediction="eps")
  run = jax.jit(lambda table, rng: loop.run(sampler, table, (256, 2, 2, 1), rng))
  rng = jax.random.key(5)
  plain = run(loop.make_table(S, ts), rng)
  padded_ts = np.concatenate([ts, np.full(6, 17, np.int32)])
  table = loop.make_table(S, padded_ts, num_active=10)
  assert table.t_prev[9] == -1 and not np.any(table.active[10:])
  np.testing.assert_array_equal(run(table, rng), plain)
  # The same compiled function runs a shorter chain when num_active shrinks.
  short = run(loop.make_table(S, padded_ts, num_active=4), rng)
  assert not np.allclose(short, plain)


def test_no_recompile_for_same_settings():
  traces = []

  def model_fn(x_t, t):
    traces.append(1)  # runs only while tracing
    return jnp.zeros_like(x_t)

  shape = (4, 2, 2, 1)
  run = lambda seed, eta, s=S: sampling.sample(model_fn, s, shape, jax.random.key(seed),
                                               sampler="ddim", num_steps=7, eta=eta)
  run(0, 0.0)
  n = len(traces)
  assert n > 0
  run(1, 0.3)
  run(2, 1.0, schedules.linear(T))  # a different schedule of the same length is data too
  assert len(traces) == n
  sampling.sample(model_fn, S, shape, jax.random.key(0), sampler="ddim", num_steps=8)
  assert len(traces) > n  # a new step count is a new program

  # Parameters passed through jax.tree_util.Partial are traced: new values, no retrace.
  def apply_fn(params, x_t, t):
    traces.append(1)
    return params * x_t

  n = len(traces)
  for p in (1.0, 2.0):
    sampling.sample(jax.tree_util.Partial(apply_fn, jnp.float32(p)), S, shape,
                    jax.random.key(0), sampler="ddpm", num_steps=3)
    if p == 1.0:
      n_first = len(traces)
  assert n_first > n and len(traces) == n_first


def test_spacings():
  np.testing.assert_array_equal(spacing.timesteps(1000, 10),
                                [999, 888, 777, 666, 555, 444, 333, 222, 111, 0])
  np.testing.assert_array_equal(spacing.timesteps(1000, 10, "leading"), np.arange(900, -1, -100))
  np.testing.assert_array_equal(spacing.timesteps(1000, 10, "trailing"), np.arange(999, 0, -100))
  np.testing.assert_array_equal(  # DDIM: (linspace(0, sqrt(0.8 T), n) ** 2).astype(int)
      spacing.timesteps(1000, 10, "quadratic"), [800, 632, 483, 355, 246, 158, 88, 39, 9, 0])
  np.testing.assert_array_equal(spacing.timesteps(T, T), np.arange(T)[::-1])
  for name in spacing.SPACINGS:
    for n in (1, 2, 7, 50, T):
      ts = spacing.timesteps(T, n, name, alphas_cumprod=AB)
      assert ts.dtype == np.int32 and len(ts) == n
      assert np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() < T
  assert spacing.timesteps(T, 1)[0] == T - 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="euler"), "ddim"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=T + 1), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(prediction="score"), "prediction"),
    (dict(spacing="cubic"), "spacing"),
    (dict(eta=-1.0), "eta"),
    (dict(shape=(0, 2)), "shape"),
])
def test_sample_validates_up_front(kwargs, match):
  args = dict(shape=(2, 2, 2, 1))
  args.update(kwargs)
  shape = args.pop("shape")
  with pytest.raises(ValueError, match=match):
    sampling.sample(PREDICTORS["eps"], S, shape, jax.random.key(0), **args)
