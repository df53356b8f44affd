"""Tests of the optimizer (warmup, clipping), the train state (EMA) and the pure train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from diffax.pipeline import optim
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import step as train_step_lib

DIM = 4


def make_config(**optim_overrides):
  config = common.base_config()
  for key, value in optim_overrides.items():
    config.optim[key] = value
  return config


def quadratic_loss(params, batch, rng):
  """Mean squared distance of a parameter vector to the batch rows; optimum: the batch mean.

  aux["noise"] is one normal draw from `rng`, to observe the step's randomness.
  """
  x = batch["x"]  # [B, DIM]
  per_example = jnp.sum((params["w"][None, :] - x) ** 2, axis=-1)  # [B]
  loss = jnp.mean(per_example)
  return loss, {"loss": loss, "noise": jax.random.normal(rng, ())}


def init_fn(rng):
  return {"w": jax.random.normal(rng, (DIM,))}


BATCH = {"x": np.random.default_rng(0).normal(size=(16, DIM)).astype(np.float32) + 3.0}
BASE_RNG = jax.random.key(42)
CONFIG = make_config(learning_rate=0.1, warmup_steps=3, grad_clip_norm=1.0, ema_decay=0.9)
TX, LR_SCHEDULE = optim.create_optimizer(CONFIG)
STEP = jax.jit(train_step_lib.make_train_step(quadratic_loss, TX, CONFIG, LR_SCHEDULE))


def fresh_state():
  return train_state_lib.create_train_state(init_fn, TX, jax.random.key(0))


# --- optimizer ----------------------------------------------------------------------------


def test_warmup_schedule_values_are_exact():
  schedule = optim.learning_rate_schedule(2e-4, 100)
  for step, expected in [(0, 0.0), (1, 2e-6), (50, 1e-4), (99, 1.98e-4), (100, 2e-4),
                         (10_000, 2e-4)]:
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6, atol=0)
  constant = optim.learning_rate_schedule(2e-4, 0)
  assert float(constant(0)) == pytest.approx(2e-4) and float(constant(7)) == pytest.approx(2e-4)


def test_optimizer_follows_the_warmup():
  """Adam's step under a constant gradient is lr(k) * sign(g): it exposes the schedule."""
  tx, schedule = optim.create_optimizer(
      make_config(learning_rate=0.5, warmup_steps=4, eps=1e-12, grad_clip_norm=0.0))
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.array([2.0, -1.0, 0.5])}
  opt_state = tx.init(params)
  for k in range(6):
    updates, opt_state = tx.update(grads, opt_state, params)
    expected = -min(k / 4, 1.0) * 0.5 * np.sign(grads["w"])
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-7)
    assert float(schedule(k)) == pytest.approx(min(k / 4, 1.0) * 0.5)


def test_clipping_bounds_the_gradient_adam_sees():
  grads = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # global norm 13
  params = jax.tree.map(jnp.zeros_like, grads)
  for clip, expected_scale in [(1.0, 1.0 / 13.0), (26.0, 1.0), (0.0, 1.0)]:
    config = make_config(grad_clip_norm=clip)
    tx, _ = optim.create_optimizer(config)
    _, opt_state = tx.update(grads, tx.init(params), params)
    # Adam's first moment after one step is (1 - b1) * (the gradient it was given).
    seen = jax.tree.map(lambda m: m / (1 - config.optim.b1),
                        optax.tree_utils.tree_get(opt_state, "mu"))
    np.testing.assert_allclose(
        float(optax.tree.norm(seen)), 13.0 * expected_scale, rtol=1e-5)
    if clip:
      assert float(optax.tree.norm(seen)) <= clip * (1 + 1e-5)


def test_bad_optimizer_config_fails_early():
  with pytest.raises(ValueError, match="grad_clip_norm"):
    optim.create_optimizer(make_config(grad_clip_norm=-1.0))
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.create_optimizer(make_config(warmup_steps=-5))


# --- train state --------------------------------------------------------------------------


def test_create_train_state():
  state = fresh_state()
  assert state.step.dtype == jnp.int32 and state.step.shape == () and int(state.step) == 0
  np.testing.assert_array_equal(state.ema_params["w"], state.params["w"])
  # A copy, not the same buffer: the state is donated, and a buffer cannot be donated twice.
  assert state.ema_params["w"] is not state.params["w"]
  # A pytree: it passes through jit intact.
  same = jax.jit(lambda s: s)(state)
  assert isinstance(same, train_state_lib.TrainState)
  jax.tree.map(np.testing.assert_array_equal, same, state)


def test_ema_update_math():
  ema = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(-3.0)}
  params = {"a": jnp.array([5.0, -2.0]), "b": jnp.array(1.0)}
  out = train_state_lib.ema_update(ema, params, 0.75)
  np.testing.assert_allclose(out["a"], [0.75 * 1 + 0.25 * 5, 0.75 * 2 - 0.25 * 2], rtol=1e-6)
  np.testing.assert_allclose(out["b"], 0.75 * -3 + 0.25 * 1, rtol=1e-6)


# --- train step ---------------------------------------------------------------------------


def test_step_is_deterministic_and_rng_follows_the_step():
  s1, m1 = STEP(fresh_state(), BATCH, BASE_RNG)
  s2, m2 = STEP(fresh_state(), BATCH, BASE_RNG)
  jax.tree.map(np.testing.assert_array_equal, (s1, m1), (s2, m2))
  # The step's key is exactly fold_in(base_rng, step).
  expected = jax.random.normal(jax.random.fold_in(BASE_RNG, 0), ())
  assert float(m1["noise"]) == float(expected)
  _, m_later = STEP(fresh_state().replace(step=jnp.int32(5)), BATCH, BASE_RNG)
  assert float(m_later["noise"]) == float(jax.random.normal(jax.random.fold_in(BASE_RNG, 5), ()))
  assert float(m_later["noise"]) != float(m1["noise"])
  _, m_other_key = STEP(fresh_state(), BATCH, jax.random.key(7))
  assert float(m_other_key["noise"]) != float(m1["noise"])


def test_ema_after_one_step_is_exact():
  """The EMA averages in the params *after* the update (at a step past the warm-up of the
  learning rate, so that the update really moves them)."""
  state = fresh_state()
  for _ in range(5):  # past the 3 warm-up steps of the learning rate
    state, _ = STEP(state, BATCH, BASE_RNG)
  state = state.replace(ema_params={"w": jnp.array([10.0, -10.0, 0.0, 1.0])})
  ema_before = np.asarray(state.ema_params["w"])
  new_state, _ = STEP(state, BATCH, BASE_RNG)
  moved = np.abs(np.asarray(new_state.params["w"]) - np.asarray(state.params["w"]))
  assert moved.min() > 0.05  # the learning rate is 0.1 here: the params changed
  d = min(CONFIG.optim.ema_decay, 6 / 15)  # the decay's warm-up at step 5
  expected = d * ema_before + (1 - d) * np.asarray(new_state.params["w"])
  np.testing.assert_allclose(new_state.ema_params["w"], expected, rtol=1e-6, atol=1e-7)
  assert int(new_state.step) == 6


def test_ema_decay_warms_up_to_the_configured_decay():
  decays = [float(train_state_lib.ema_decay_at(step, 0.999)) for step in (0, 10, 100, 20000)]
  np.testing.assert_allclose(decays, [1 / 10, 11 / 20, 101 / 110, 0.999], rtol=1e-6)


def test_metrics_are_scalars_with_grad_norm_and_learning_rate():
  state = fresh_state().replace(step=jnp.int32(2))
  _, metrics = STEP(state, BATCH, BASE_RNG)
  assert {"loss", "noise", "grad_norm", "learning_rate", "nonfinite"} <= set(metrics)
  assert all(jnp.shape(v) == () for v in metrics.values())
  # d/dw mean_b |w - x_b|^2 = 2 (w - mean_b x_b): the raw gradient, before clipping.
  grad = 2 * (np.asarray(state.params["w"]) - BATCH["x"].mean(0))
  np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
  assert float(metrics["grad_norm"]) > CONFIG.optim.grad_clip_norm  # so clipping was active
  np.testing.assert_allclose(metrics["learning_rate"], 0.1 * 2 / 3, rtol=1e-6)
  assert float(metrics["nonfinite"]) == 0.0


def test_quadratic_loss_decreases_to_its_minimum():
  state = fresh_state()
  losses = []
  for _ in range(60):
    state, metrics = STEP(state, BATCH, BASE_RNG)
    losses.append(float(metrics["loss"]))
  minimum = float(np.mean(np.sum((BATCH["x"] - BATCH["x"].mean(0)) ** 2, -1)))
  assert losses[-1] < losses[0] / 5
  assert losses[-1] < minimum + 0.05, (losses[-1], minimum)
  # Adam with a constant lr hovers within about lr of the optimum (started ~3 away).
  np.testing.assert_allclose(state.params["w"], BATCH["x"].mean(0), atol=0.25)
  assert int(state.step) == 60


def test_nonfinite_loss_is_flagged_and_can_be_skipped():
  bad_batch = {"x": BATCH["x"].copy()}
  bad_batch["x"][0, 0] = np.nan
  state = fresh_state()
  new_state, metrics = STEP(state, bad_batch, BASE_RNG)
  assert float(metrics["nonfinite"]) == 1.0 and not np.isfinite(float(metrics["loss"]))
  assert not np.all(np.isfinite(new_state.params["w"]))  # default: the update is applied

  skip_step = jax.jit(train_step_lib.make_train_step(
      quadratic_loss, TX, CONFIG, LR_SCHEDULE, skip_nonfinite=True))
  skipped, metrics = skip_step(state, bad_batch, BASE_RNG)
  assert float(metrics["nonfinite"]) == 1.0
  assert int(skipped.step) == 1
  jax.tree.map(np.testing.assert_array_equal,
               (skipped.params, skipped.ema_params, skipped.opt_state),
               (state.params, state.ema_params, state.opt_state))
  # A finite batch is applied as usual.
  applied, _ = skip_step(state, BATCH, BASE_RNG)
  reference, _ = STEP(state, BATCH, BASE_RNG)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), applied, reference)


def test_bad_ema_decay_fails_early():
  with pytest.raises(ValueError, match="ema_decay"):
    train_step_lib.make_train_step(quadratic_loss, TX, make_config(ema_decay=1.5))
