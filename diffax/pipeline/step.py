"""One training step as a pure function of (state, global batch, base rng).

The step knows nothing about devices: it sees the global batch, and `diffax.pipeline.parallel` jits it
with the batch sharded over the 'data' mesh axis, so XLA inserts the gradient all-reduce.
Its randomness is `fold_in(base_rng, state.step)`, so the same state, batch and key always give
the same result, and a resumed run draws the same noise as an uninterrupted one.

Gradient accumulation (`grad_accum_steps = k`) splits the global batch into k micro-batches,
runs them one after another under `lax.scan` (activations of one micro-batch live at a time),
averages their gradients and makes one optimizer update. Micro-batch j holds the examples
j, j + k, j + 2k, ... of the global batch, so each device's rows split locally, without
communication. The step first adds `batch["index"]`, each example's position in the global
batch, and `diffax.losses` keys each example's randomness (t, noise, condition dropout) on it: every
example draws the same values whatever k, so k changes the numbers only by float rounding (for a
model without dropout, whose masks are drawn per micro-batch).

Frozen parts. A stage may need networks it does not train (a latent model's autoencoder, a
frozen text encoder). Their parameters are the step's fourth argument, `frozen` (replicated,
never updated, not in the train state or its checkpoints), and `preprocess(frozen, batch, rng)`
turns each micro-batch into the loss's batch inside the step (e.g. images into latents), so one
program per step runs on the devices, as for any other model.
"""

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from diffax.pipeline import optim
from diffax.pipeline import state as train_state_lib
from diffax.pipeline.state import TrainState

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]

# config.train.nonfinite: what a NaN/inf loss or gradient does. "stop": the trainer stops the
# run; "skip": the step drops the update and the trainer counts it.
NONFINITE_MODES = ("stop", "skip")


def check_options(nonfinite: str, grad_accum_steps: int) -> None:
  """Raises ValueError, naming the config field, on a `config.train.nonfinite` outside
  `NONFINITE_MODES` or a `config.train.grad_accum_steps` that is not an int >= 1."""
  if nonfinite not in NONFINITE_MODES:
    raise ValueError(f"unknown config.train.nonfinite {nonfinite!r}; choose one of "
                     f"{list(NONFINITE_MODES)}")
  k = grad_accum_steps
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"config.train.grad_accum_steps must be an int >= 1, got {k!r}")


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


def with_index(batch: Batch) -> Batch:
  """Adds `"index"` `i32[B]`, each example's position in the global batch (see module doc)."""
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(f"batch arrays disagree on the batch size: {sorted(sizes)}")
  return dict(batch, index=jnp.arange(sizes.pop(), dtype=jnp.int32))


def split_micro_batches(batch: Batch, num_micro: int) -> Batch:
  """Splits a global batch into `num_micro` strided micro-batches.

  Args:
    batch: a dict of `[B, ...]` arrays.
    num_micro: k, a divisor of B.

  Returns:
    The same dict with arrays `[k, B // k, ...]`, where `[j]` holds examples j, j + k, ...
  """
  size = jax.tree.leaves(batch)[0].shape[0]
  if size % num_micro:
    raise ValueError(f"the global batch of {size} examples cannot be split into "
                     f"config.train.grad_accum_steps={num_micro} equal micro-batches")
  # [B, ...] -> [B / k, k, ...] -> [k, B / k, ...]: row r of micro-batch j is example r k + j.
  return jax.tree.map(
      lambda x: jnp.swapaxes(x.reshape((size // num_micro, num_micro) + x.shape[1:]), 0, 1),
      batch)


def accumulate_gradients(loss_fn: Callable, params, batch: Batch, rng: jax.Array,
                         num_micro: int):
  """The loss, aux metrics and gradient of `loss_fn`, averaged over `num_micro` micro-batches.

  With equal micro-batches, the mean of their mean losses is the mean loss of the whole batch,
  and the same holds for the gradient, so this is one big-batch gradient computed in pieces.

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)`.
    params: the parameters to differentiate.
    batch: the global batch, a dict of `[B, ...]` arrays; `"index"` is added (`with_index`).
    rng: the step's key, given to every micro-batch (its examples' `index` tells them apart).
    num_micro: k; 1 computes the gradient of the whole batch at once.

  Returns:
    `((loss, aux), grads)` as from `jax.value_and_grad(loss_fn, has_aux=True)`, averaged.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  batch = with_index(batch)
  if num_micro == 1:
    return grad_fn(params, batch, rng)
  micro = split_micro_batches(batch, num_micro)

  def add(total, micro_batch):
    out = grad_fn(params, micro_batch, rng)
    return jax.tree.map(jnp.add, total, out), None

  first = jax.tree.map(lambda x: x[0], micro)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(grad_fn, params, first, rng))
  total, _ = jax.lax.scan(add, zeros, micro)
  return jax.tree.map(lambda x: x / num_micro, total)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    config,
    lr_schedule: Optional[Callable] = None,
    *,
    skip_nonfinite: Optional[bool] = None,
    grad_accum_steps: Optional[int] = None,
    preprocess: Optional[Callable] = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
  """Builds the pure training step.

  Args:
    loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)` with a scalar loss and a dict of
      scalar metrics (see `diffax.losses.make_loss_fn`).
    tx: the optimizer (`diffax.pipeline.optim.create_optimizer`).
    config: the run config; reads `config.optim.ema_decay` (warmed up, see
      `train_state.ema_decay_at`) and, when `lr_schedule` is None,
      `config.optim.learning_rate` / `warmup_steps` for the logged learning rate; and
      `config.train.nonfinite` / `grad_accum_steps` when the arguments below are None.
    lr_schedule: the schedule `tx` follows, to log the learning rate; None rebuilds it from
      config.
    skip_nonfinite: if True, an update whose loss or gradient norm is NaN/inf is dropped (the
      state keeps its params, EMA and optimizer state; only the step advances). None reads
      `config.train.nonfinite == "skip"` (False when the config has no such field).
    grad_accum_steps: k >= 1 micro-batches per step (see `accumulate_gradients`); the global
      batch must be a multiple of k. None reads `config.train.grad_accum_steps` (default 1).
    preprocess: `preprocess(frozen, batch, rng) -> batch`, applied to each micro-batch (with
      its `"index"`) inside the step before the loss; `rng` is the step's key (draw from a
      stream of your own, keyed per example on the index). None: the batch goes to the loss
      as it is.

  Returns:
    `step(state, batch, base_rng, frozen=None) -> (new_state, metrics)`. `batch` is the global
    batch (a dict of `[B, ...]` arrays); `frozen` the parameters `preprocess` reads; `metrics`
    holds the loss function's aux metrics plus `loss`,
    `grad_norm` (global norm of the raw gradient, before clipping), `learning_rate` (the rate
    of this update; it is `lr_schedule(state.step)`, which lags the optimizer's own count
    only after skipped updates) and `nonfinite` (1.0 when the loss or gradient was NaN/inf,
    else 0.0: the caller stops or counts on it). All metrics are scalars; with accumulation,
    the aux metrics are means over the micro-batches.
  """
  ema_decay = config.optim.ema_decay
  if not 0.0 <= ema_decay <= 1.0:
    raise ValueError(f"config.optim.ema_decay must lie in [0, 1], got {ema_decay}")
  train_config = config.get("train", {}) if hasattr(config, "get") else {}
  if skip_nonfinite is None:
    mode = train_config.get("nonfinite", "stop")
  else:
    mode = "skip" if skip_nonfinite else "stop"
  if grad_accum_steps is None:
    grad_accum_steps = train_config.get("grad_accum_steps", 1)
  check_options(mode, grad_accum_steps)
  skip_nonfinite = mode == "skip"
  if lr_schedule is None:
    lr_schedule = optim.learning_rate_schedule(
        config.optim.learning_rate, config.optim.warmup_steps)

  def step(state: TrainState, batch: Batch, base_rng: jax.Array, frozen=None):
    rng = jax.random.fold_in(base_rng, state.step)
    loss = loss_fn
    if preprocess is not None:
      loss = lambda params, b, r: loss_fn(params, preprocess(frozen, b, r), r)
    (loss, aux), grads = accumulate_gradients(loss, state.params, batch, rng, grad_accum_steps)
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
