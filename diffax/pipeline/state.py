"""The training state: a plain pytree of step, params, EMA params and optimizer state.

It holds no RNG: every random draw derives from `fold_in(base_rng, step)`, so a run resumed
from a checkpoint of this state continues exactly as if it had never stopped.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries from one step to the next.

  Attributes:
    step: `i32[]`, the number of train steps taken so far.
    params: the model parameters being optimized.
    ema_params: exponential moving average of `params` (what samplers use, as in DDPM).
    opt_state: the optax optimizer state.
  """

  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: optax.OptState


def create_train_state(
    init_fn: Callable[[jax.Array], PyTree], tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
  """Initializes the model, its EMA copy and the optimizer at step 0.

  Jit it with output shardings (`diffax.pipeline.parallel.create_sharded_state`) to create the state
  directly on the devices.

  Args:
    init_fn: `init_fn(rng) -> params`, e.g. from `diffax.models.create`.
    tx: the optimizer.
    rng: the parameter-initialization key.

  Returns:
    The step-0 `TrainState`, with `ema_params` equal to `params`.
  """
  params = init_fn(rng)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      # A copy, not an alias: the state is donated to the train step, and one buffer must not
      # be donated twice.
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
  )


def ema_decay_at(step, decay):
  """The EMA decay used at `step`: min(decay, (1 + step) / (10 + step)).

  A warm-up, as in TensorFlow's ExponentialMovingAverage with `num_updates`: with a fixed
  decay of 0.999 the average still holds 0.999^1000 = 37 % of the random initialization after
  1,000 steps, and samples drawn from it early in a run are noise. The warm-up makes the average
  track the recent params from the start and reach the configured decay after ~10/(1-decay) steps.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema: PyTree, params: PyTree, decay) -> PyTree:
  """One step of the exponential moving average, ema' = decay * ema + (1 - decay) * params.

  Args:
    ema: the current average.
    params: the new parameters (after this step's update).
    decay: the EMA decay in [0, 1] (DDPM uses 0.9999); a Python float or a scalar array.

  Returns:
    The updated average, with the dtypes of `ema`.
  """
  return jax.tree.map(
      lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)
