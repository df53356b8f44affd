"""One training step as a pure function of (state, global batch, base rng).

The step knows nothing about devices: it sees the global batch, and `diffax.parallel` jits it
with the batch sharded over the 'data' mesh axis, so XLA inserts the gradient all-reduce.
Its randomness is `fold_in(base_rng, state.step)`, so the same state, batch and key always give
the same result, and a resumed run draws the same noise as an uninterrupted one.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffax import optim
from diffax import train_state as train_state_lib
from diffax.train_state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]


def keep_finite(ok: jax.Array, new: TrainState, old: TrainState) -> TrainState:
  """Takes `new` where `ok` else `old`, leaf by leaf, but always advances the step.

  A skipped update leaves params, EMA and optimizer state untouched; the step still counts the
  batch, so the next step draws fresh randomness.

  Args:
    ok: `bool[]`, whether the update is finite.
    new: the state after the update.
    old: the state before it.

  Returns:
    The state to continue from.
  """
  kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
  return kept.replace(step=new.step)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    config,
    lr_schedule: Optional[Callable] = None,
    *,
    skip_nonfinite: bool = False,
) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds the pure training step.

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)` with a scalar loss and a dict of
      scalar metrics (see `diffax.losses.make_loss_fn`).
    tx: the optimizer (`diffax.optim.create_optimizer`).
    config: the run config; reads `config.optim.ema_decay` (warmed up, see
      `train_state.ema_decay_at`) and, when `lr_schedule` is None,
      `config.optim.learning_rate` / `warmup_steps` for the logged learning rate.
    lr_schedule: the schedule `tx` follows, to log the learning rate; None rebuilds it from
      config.
    skip_nonfinite: if True, an update whose loss or gradient norm is NaN/inf is dropped (the
      state keeps its params, EMA and optimizer state; only the step advances).

  Returns:
    `step(state, batch, base_rng) -> (new_state, metrics)`. `batch` is the global batch (a dict
    of `[B, ...]` arrays); `metrics` holds the loss function's aux metrics plus `loss`,
    `grad_norm` (global norm of the raw gradient, before clipping), `learning_rate` (the rate
    of this update; it is `lr_schedule(state.step)`, which lags the optimizer's own count
    only after skipped updates) and `nonfinite` (1.0 when the loss or gradient was NaN/inf,
    else 0.0: the caller stops or counts on it). All metrics are scalars.
  """
  ema_decay = config.optim.ema_decay
  if not 0.0 <= ema_decay <= 1.0:
    raise ValueError(f"config.optim.ema_decay must lie in [0, 1], got {ema_decay}")
  if lr_schedule is None:
    lr_schedule = optim.learning_rate_schedule(
        config.optim.learning_rate, config.optim.warmup_steps)

  def step(state: TrainState, batch: Batch, base_rng: jax.Array):
    rng = jax.random.fold_in(base_rng, state.step)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        ema_params=train_state_lib.ema_update(
            state.ema_params, params, train_state_lib.ema_decay_at(state.step, ema_decay)),
        opt_state=opt_state,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      new_state = keep_finite(finite, new_state, state)
    metrics = dict(aux)
    metrics.update(
        loss=loss,
        grad_norm=grad_norm,
        learning_rate=jnp.asarray(lr_schedule(state.step), jnp.float32),
        nonfinite=1.0 - finite.astype(jnp.float32),
    )
    return new_state, metrics

  return step
