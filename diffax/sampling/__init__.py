"""Samplers: pure reverse steps run by one jitted `lax.scan` (see `driver`).

  x0 = diffax.sampling.sample(model_fn, schedule, (16, 32, 32, 3), jax.random.key(0),
                              sampler="ddim", num_steps=50)

`model_fn(x_t, t) -> model output` is any jittable callable; t is `i32[B]` in the training
schedule's index. A plain function is a static argument of the compiled sampler (compiled once per
function object, with any arrays it closes over baked in as constants). To keep parameters traced,
so new parameters reuse the compiled sampler, pass a `jax.tree_util.Partial`:

  model_fn = jax.tree_util.Partial(apply_fn, params)   # called as apply_fn(params, x_t, t)
"""

import functools
import numbers
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffax import diffusion
from diffax.sampling import ddim
from diffax.sampling import ddpm
from diffax.sampling import driver
from diffax.sampling import spacing
from diffax.sampling.ddim import ddim_step
from diffax.sampling.ddpm import ddpm_step
from diffax.sampling.driver import Sampler, StepInput, Table
from diffax.sampling.spacing import SPACINGS, timesteps
from diffax.schedules import Schedule

# config.sample.sampler -> factory(model_fn, *, eta, prediction, clip_x0) -> driver.Sampler.
SAMPLERS = {"ddpm": ddpm.sampler, "ddim": ddim.sampler}


def sample(model_fn: Callable, s: Schedule, shape, rng: jax.Array, *, sampler: str = "ddpm",
           num_steps: Optional[int] = None, eta=0.0, prediction: str = "eps",
           clip_x0: bool = False, spacing: str = "linspace") -> jax.Array:
  """Draws samples by running a sampler from pure noise to x0 in one jitted `lax.scan`.

  Compiled once per (model_fn, shape, sampler, number of steps, prediction, clip_x0); the
  schedule, rng, timestep table and eta are traced, so changing them does not recompile.

  Args:
    model_fn: `model_fn(x_t, t) -> output` shaped like x_t, t `i32[B]` in [0, T); a hashable
      callable, or a `jax.tree_util.Partial` whose bound arguments are then traced.
    s: the training schedule.
    shape: the sample shape `(B, ...)`.
    rng: a PRNG key.
    sampler: a key of `SAMPLERS`: "ddpm" (ancestral) or "ddim".
    num_steps: None for all T steps; n in [1, T] for the n timesteps of `spacing` (respaced
      DDPM, or DDIM on that subset).
    eta: DDIM's stochasticity (0 deterministic, 1 DDPM's law); ignored by "ddpm".
    prediction: what the model predicts: "eps", "x0" or "v".
    clip_x0: clip every x0 estimate to [-1, 1].
    spacing: a key of `SPACINGS`, how the n timesteps are picked.

  Returns:
    The samples, f32 `shape`.

  Raises:
    ValueError: on an unknown sampler, prediction or spacing, num_steps outside [1, T], a bad
      shape, a negative eta, or an unhashable model_fn.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
  diffusion.check_prediction(prediction)
  num_train_steps = s.num_steps
  table = timesteps(num_train_steps, num_train_steps if num_steps is None else num_steps,
                    spacing)
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple of ints (B, ...), got {shape!r}") from None
  if not shape or min(shape) < 1:
    raise ValueError(f"shape must be a non-empty tuple of positive ints (B, ...), got {shape}")
  if isinstance(eta, numbers.Real) and not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {model_fn!r}")
  if isinstance(model_fn, jax.tree_util.Partial):
    static_fn, traced_fn = None, model_fn
  else:
    try:
      hash(model_fn)
    except TypeError:
      raise ValueError("model_fn must be hashable (it is a static argument of the compiled "
                       "sampler); wrap it in jax.tree_util.Partial") from None
    static_fn, traced_fn = model_fn, None
  return _sample(static_fn, traced_fn, s, rng, table, jnp.asarray(eta, jnp.float32),
                 shape=shape, sampler=sampler, prediction=prediction, clip_x0=bool(clip_x0))


@functools.partial(
    jax.jit, static_argnames=("static_fn", "shape", "sampler", "prediction", "clip_x0"))
def _sample(static_fn, traced_fn, s, rng, table, eta, *, shape, sampler, prediction, clip_x0):
  model_fn = traced_fn if static_fn is None else static_fn
  step = SAMPLERS[sampler](model_fn, eta=eta, prediction=prediction, clip_x0=clip_x0)
  return driver.run(step, driver.make_table(s, table), shape, rng)


__all__ = ["SAMPLERS", "SPACINGS", "Sampler", "StepInput", "Table", "ddim", "ddim_step", "ddpm",
           "ddpm_step", "driver", "sample", "spacing", "timesteps"]
