"""Tests of the denoising loss against known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import diffusion
from diffax import losses
from diffax import schedules

SCHEDULE = schedules.cosine(200)
X0 = jax.random.uniform(jax.random.key(0), (1, 4, 4, 2), minval=-1, maxval=1)


def oracle(prediction, x0=X0):
  """The exact predictor when the data law is a point mass at x0: it can invert q_sample."""
  def apply_fn(params, x_t, t, cond=None, *, train=False, rng=None):
    del params, cond, train, rng
    alpha, sigma = diffusion.alpha_sigma(SCHEDULE, t, x_t)
    eps = diffusion.eps_from_x0(x_t, x0, alpha, sigma)
    return diffusion.target(x0, eps, alpha, sigma, prediction)
  return apply_fn


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
@pytest.mark.parametrize("weighting", losses.WEIGHTINGS)
def test_perfect_predictor_has_zero_loss(prediction, weighting):
  loss_fn = jax.jit(losses.make_loss_fn(
      oracle(prediction), SCHEDULE, prediction=prediction, weighting=weighting))
  batch = {"x": jnp.broadcast_to(X0, (64,) + X0.shape[1:])}
  loss, aux = loss_fn(None, batch, jax.random.key(1))
  # eps from x0 divides by sigma, tiny at t = 0: float32 rounding, not a modelling error.
  assert float(loss) < 1e-5, (prediction, weighting, float(loss))
  assert float(aux["mse"]) < 1e-5


def test_zero_predictor_has_unit_eps_loss():
  """Predicting eps = 0 costs E[eps^2] = 1 per pixel; predicting x0 = 0 costs E[x0^2]."""
  zero = lambda params, x_t, t, cond=None, **kw: jnp.zeros_like(x_t)
  batch = {"x": jnp.full((256, 8, 8, 1), 0.5)}
  eps_loss, _ = losses.make_loss_fn(zero, SCHEDULE, prediction="eps")(None, batch,
                                                                       jax.random.key(2))
  np.testing.assert_allclose(float(eps_loss), 1.0, atol=0.02)
  x0_loss, _ = losses.make_loss_fn(zero, SCHEDULE, prediction="x0")(None, batch,
                                                                    jax.random.key(2))
  np.testing.assert_allclose(float(x0_loss), 0.25, rtol=1e-5)


def test_min_snr_weights_match_paper():
  snr = jnp.array([0.1, 1.0, 5.0, 50.0])
  gamma = 5.0
  clipped = np.minimum(np.asarray(snr), gamma)
  np.testing.assert_allclose(losses.snr_weight(snr, "eps", "min_snr", gamma), clipped / snr,
                             rtol=1e-6)
  np.testing.assert_allclose(losses.snr_weight(snr, "x0", "min_snr", gamma), clipped, rtol=1e-6)
  np.testing.assert_allclose(losses.snr_weight(snr, "v", "min_snr", gamma),
                             clipped / (np.asarray(snr) + 1), rtol=1e-6)
  np.testing.assert_allclose(losses.snr_weight(snr, "eps", "none", gamma), 1.0)


def test_min_snr_loss_is_weighted_mse():
  """With a constant-error model, the weighted loss is the batch mean of the weights."""
  off_by_one = lambda params, x_t, t, cond=None, **kw: oracle("eps")(params, x_t, t) + 1.0
  batch = {"x": jnp.broadcast_to(X0, (32,) + X0.shape[1:])}
  rng = jax.random.key(3)
  loss, aux = losses.make_loss_fn(off_by_one, SCHEDULE, weighting="min_snr",
                                  min_snr_gamma=5.0)(None, batch, rng)
  t = jax.random.randint(jax.random.split(rng, 4)[0], (32,), 0, SCHEDULE.num_steps)
  snr = jnp.exp(SCHEDULE.log_snr[t])
  np.testing.assert_allclose(float(aux["mse"]), 1.0, rtol=1e-4)
  np.testing.assert_allclose(float(loss), float(jnp.mean(jnp.minimum(snr, 5.0) / snr)),
                             rtol=1e-4)


def test_cond_dropout_replaces_the_droppable_keys_by_the_null_condition_together():
  seen = {}

  def apply_fn(params, x_t, t, cond=None, **kw):
    seen["cond"] = cond
    return jnp.zeros_like(x_t)

  n = 4000
  cond = {"label": jnp.full((n,), 3), "embedding": jnp.ones((n, 2)),
          "low_res": jnp.full((n, 1, 1, 1), 7.0)}
  null = {"label": 10, "embedding": jnp.array([-1.0, -2.0])}  # low_res is never dropped
  batch = {"x": jnp.zeros((n, 2, 2, 1)), "cond": cond}
  losses.make_loss_fn(apply_fn, SCHEDULE, null_cond=null, cond_dropout=0.25)(
      None, batch, jax.random.key(4))
  got = {k: np.asarray(v) for k, v in seen["cond"].items()}
  dropped = got["label"] == 10
  assert set(np.unique(got["label"])) == {3, 10}
  np.testing.assert_allclose(np.mean(dropped), 0.25, atol=0.03)
  # One coin per example: every droppable key of an example is dropped with its label.
  np.testing.assert_array_equal(got["embedding"][dropped], np.tile([-1.0, -2.0], (dropped.sum(),
                                                                                   1)))
  np.testing.assert_array_equal(got["embedding"][~dropped], 1.0)
  np.testing.assert_array_equal(got["low_res"], 7.0)


def test_low_res_noise_augments_the_low_res_input_and_tells_its_level():
  """Imagen's noise-conditioning augmentation: s ~ U[0, max] per example, low_res becomes
  sqrt(1 - s^2) low_res + s noise, cond["noise_level"] = s; per-example draws are the same
  whatever the micro-batch an example sits in."""
  seen = []

  def apply_fn(params, x_t, t, cond=None, **kw):
    seen.append(cond)
    return jnp.zeros_like(x_t)

  n = 2000
  low = jnp.full((n, 2, 2, 1), 0.5)
  batch = {"x": jnp.zeros((n, 4, 4, 1)), "cond": {"low_res": low}}
  loss_fn = losses.make_loss_fn(apply_fn, SCHEDULE, low_res_noise=0.4)
  loss_fn(None, batch, jax.random.key(7))
  level, noisy = np.asarray(seen[0]["noise_level"]), np.asarray(seen[0]["low_res"])
  assert level.shape == (n,) and 0 <= level.min() and level.max() <= 0.4
  np.testing.assert_allclose([level.mean(), level.std()], [0.2, 0.4 / np.sqrt(12)], atol=0.015)
  noise = (noisy - np.sqrt(1 - level**2)[:, None, None, None] * 0.5) / level[:, None, None, None]
  np.testing.assert_allclose([noise.mean(), noise.std()], [0.0, 1.0], atol=0.04)
  # With the examples' global positions, halves of the batch draw what the whole batch draws.
  index = jnp.arange(8)
  small = {"x": jnp.zeros((8, 4, 4, 1)), "cond": {"low_res": low[:8]}, "index": index}
  seen.clear()
  loss_fn(None, small, jax.random.key(7))
  loss_fn(None, jax.tree.map(lambda a: a[4:], small), jax.random.key(7))
  np.testing.assert_array_equal(seen[0]["low_res"][4:], seen[1]["low_res"])
  np.testing.assert_array_equal(seen[0]["noise_level"][4:], seen[1]["noise_level"])
  # Without the option, low_res passes untouched and no level is added.
  seen.clear()
  losses.make_loss_fn(apply_fn, SCHEDULE)(None, batch, jax.random.key(7))
  assert set(seen[0]) == {"low_res"} and np.all(np.asarray(seen[0]["low_res"]) == 0.5)


def test_the_loss_is_shape_generic():
  """Vectors (a prior over embeddings), 1-D signals and video: the same loss, same value."""
  zero = lambda params, x_t, t, cond=None, **kw: jnp.zeros_like(x_t)
  for shape in [(512, 6), (512, 16, 2), (128, 2, 4, 4, 3)]:
    loss, _ = losses.make_loss_fn(zero, SCHEDULE)(None, {"x": jnp.ones(shape)},
                                                  jax.random.key(6))
    np.testing.assert_allclose(float(loss), 1.0, atol=0.05)  # E[eps^2] per entry


def test_timesteps_cover_the_schedule_uniformly():
  seen = {}

  def apply_fn(params, x_t, t, cond=None, **kw):
    seen["t"] = t
    return jnp.zeros_like(x_t)

  losses.make_loss_fn(apply_fn, SCHEDULE)(None, {"x": jnp.zeros((20000, 1, 1, 1))},
                                          jax.random.key(5))
  counts = np.bincount(np.asarray(seen["t"]), minlength=SCHEDULE.num_steps)
  assert counts.size == SCHEDULE.num_steps and counts.min() > 50
  np.testing.assert_allclose(counts.mean(), 100.0)
  assert counts.std() < 20  # binomial std is about 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(prediction="noise"), "prediction"),
    (dict(weighting="snr"), "weighting"),
    (dict(cond_dropout=1.5), "cond_dropout"),
    (dict(cond_dropout=0.1), "null_cond"),  # nothing to drop to
    (dict(low_res_noise=1.5), "low_res_noise"),
])
def test_bad_options_are_rejected(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.make_loss_fn(oracle("eps"), SCHEDULE, **kwargs)
