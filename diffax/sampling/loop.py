"""The one sampling loop: a `lax.scan` of a pure sampler step over a table of timesteps.

A sampler is a `Sampler(step, init, final)` of pure functions: `init` turns the starting noise
into the scan carry, `step(carry, StepInput) -> carry` moves it from timestep t to t_prev, and
`final` reads the sample out of the last carry. The carry is any pytree, so multistep solvers
(DPM-Solver++(2M) keeps the previous x0 estimate) and two-evaluation steps (Heun) fit the same
loop; the step owns its model calls, so guidance wraps `model_fn` and inpainting wraps `step`.

Everything that may change between calls without changing the program is data: the `Table` of
timesteps and alpha-bars is a traced scan input, rows past `num_active` are skipped with
`lax.cond`, and a sampler's scalars (DDIM's eta) are traced values closed over by its step.

Randomness is per example: sample i of a request draws its starting noise and the noise of
step j from `fold_in(rng, ids[i])` and `fold_in(., j)`, where `ids[i]` is its index in the
whole request. So sample i depends on the seed and i alone, not on the batch it was drawn in
nor on how many devices drew it.

Every step is written in alpha-bars, so it works between any two noise levels. Samplers derived
in EDM's coordinates (Karras et al. 2022: x = alpha (x_edm), sigma_edm = sqrt((1 - ab) / ab))
convert at the step boundary (`edm_sigma`), so all carries hold the VP-scaled x_t.
"""

from typing import Any, Callable, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp

from diffax import diffusion
from diffax.sampling import thresholding
from diffax.schedules import Schedule


class StepInput(NamedTuple):
  """What one step sees; every field but rng is a traced scalar."""
  index: jax.Array           # i32[], the row of the table
  rng: jax.Array             # key[B], each example's key for this step (draw with `normal`)
  t: jax.Array               # i32[], timestep fed to the model (index into the training schedule)
  t_prev: jax.Array          # i32[], the timestep this step lands on; -1 after the last
  alpha_bar: jax.Array       # f32[], alpha-bar at t
  alpha_bar_prev: jax.Array  # f32[], alpha-bar at t_prev (1 at t_prev == -1: clean data)


class Table(NamedTuple):
  """The rows a sampler visits, each field `[N]`; rows with active False are skipped."""
  t: jax.Array               # i32[N]
  t_prev: jax.Array          # i32[N]
  alpha_bar: jax.Array       # f32[N]
  alpha_bar_prev: jax.Array  # f32[N]
  active: jax.Array          # bool[N]


def _identity(x):
  return x


def _replace(carry, x):
  del carry
  return x


class Sampler(NamedTuple):
  """A sampler as pure functions; `init`, `final`, `with_x`, `restart` default to carry = x.

  `final(carry)` reads the current sample x_t out of any carry (not only the last one),
  `with_x(carry, x)` puts a changed x_t back, and `restart(carry)` forgets what a multistep
  solver remembers of earlier steps (its next step is first order); editing (inpainting) wraps
  a step with these.
  """
  step: Callable[[Any, StepInput], Any]
  init: Callable[[jax.Array], Any] = _identity
  final: Callable[[Any], jax.Array] = _identity
  with_x: Callable[[Any, jax.Array], Any] = _replace
  restart: Callable[[Any], Any] = _identity


def make_table(s: Schedule, timesteps: jax.Array, num_active: Optional[jax.Array] = None) -> Table:
  """The table of a descending timestep sequence; jittable, all inputs may be traced.

  Args:
    s: the training schedule whose alpha-bars the timesteps index.
    timesteps: `i32[N]`, strictly decreasing over its first `num_active` entries (see
      `diffax.sampling.spacing`); later entries are padding and are ignored.
    num_active: how many leading entries are real steps (default N). Padding a table to a fixed
      length and varying num_active changes the number of steps without recompiling.

  Returns:
    The `Table`: row i steps from timesteps[i] to timesteps[i + 1], and the last active row to
    t_prev = -1 (alpha-bar 1).
  """
  t = jnp.asarray(timesteps, jnp.int32)  # [N]
  n = t.shape[0]
  index = jnp.arange(n)
  num_active = n if num_active is None else jnp.asarray(num_active, jnp.int32)
  active = index < num_active
  t = jnp.where(active, t, 0)  # padding rows: a harmless valid timestep
  t_prev = jnp.where(index + 1 < num_active, jnp.roll(t, -1), -1)
  ab = s.alphas_cumprod
  ab_prev = jnp.where(t_prev >= 0, ab[jnp.maximum(t_prev, 0)], 1.0)
  return Table(t=t, t_prev=t_prev, alpha_bar=ab[t], alpha_bar_prev=ab_prev, active=active)


def fold_in(keys: jax.Array, data) -> jax.Array:
  """`jax.random.fold_in` of each key of a `[B]` key array."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def normal(keys: jax.Array, like: jax.Array) -> jax.Array:
  """Standard normal noise shaped like `like` `[B, ...]`: example b drawn from keys[b]."""
  return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(keys)


def example_keys(rng: jax.Array, ids: jax.Array) -> jax.Array:
  """The key of each example of a request: `fold_in(rng, id)`, `[B]`."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, ids)


def initial_noise(rng: jax.Array, shape, ids: Optional[jax.Array] = None) -> jax.Array:
  """The x_T that `run` starts from: sample b's noise from `fold_in(fold_in(rng, ids[b]), 0)`."""
  ids = jnp.arange(shape[0]) if ids is None else ids
  return normal(fold_in(example_keys(rng, ids), 0), jnp.zeros(shape, jnp.float32))


def run(sampler: Sampler, table: Table, shape, rng: jax.Array,
        x_init: Optional[jax.Array] = None, ids: Optional[jax.Array] = None) -> jax.Array:
  """Runs `sampler` over `table` from pure noise (or `x_init`) to a sample. Call it under jit.

  Args:
    sampler: the pure step and its carry conversions.
    table: the timesteps to visit (`make_table`).
    shape: the sample shape `[B, ...]`.
    rng: a PRNG key, the request's seed.
    x_init: the starting point x_T; None draws it from N(0, I).
    ids: `i32[B]`, each sample's index in the whole request (default 0 .. B-1): sample b
      draws every random number from `fold_in(rng, ids[b])`.

  Returns:
    The samples, f32 `shape`.
  """
  ids = jnp.arange(shape[0]) if ids is None else ids
  chex.assert_shape(ids, shape[:1])
  step_keys = fold_in(example_keys(rng, ids), 1)  # [B]
  x = initial_noise(rng, shape, ids) if x_init is None else x_init
  chex.assert_shape(x, tuple(shape))

  def body(carry, xs):
    i, row = xs
    inputs = StepInput(index=i, rng=fold_in(step_keys, i), t=row.t, t_prev=row.t_prev,
                       alpha_bar=row.alpha_bar, alpha_bar_prev=row.alpha_bar_prev)
    carry = jax.lax.cond(row.active, sampler.step, lambda c, _: c, carry, inputs)
    return carry, None

  carry, _ = jax.lax.scan(body, sampler.init(x), (jnp.arange(table.t.shape[0]), table))
  return sampler.final(carry)


def single_call_sampler(update: Callable, model_fn: Callable, **update_kwargs) -> Sampler:
  """The sampler of a one-evaluation stochastic update (DDPM, DDIM, Euler ancestral).

  Each step calls the model once at (x_t, t), draws fresh noise and returns
  `update(output, x_t, alpha_bar, alpha_bar_prev, noise, **update_kwargs)`.
  """

  def step(x, inputs: StepInput):
    output = call_model(model_fn, x, inputs.t)
    return update(output, x, inputs.alpha_bar, inputs.alpha_bar_prev, normal(inputs.rng, x),
                  **update_kwargs)

  return Sampler(step)


def call_model(model_fn: Callable, x: jax.Array, t: jax.Array) -> jax.Array:
  """model_fn(x, t) with the scalar timestep t broadcast to `i32[B]`, output cast to x's dtype."""
  t = jnp.full((x.shape[0],), t, jnp.int32)  # [B]
  return model_fn(x, t).astype(x.dtype)


def denoise(model_output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array, *,
            prediction: str = "eps", clip_x0: bool = False,
            threshold=None) -> tuple[jax.Array, jax.Array]:
  """The (x0, eps) estimates of a model output at noise level alpha_bar.

  Args:
    model_output: the model's prediction, shaped like x_t.
    x_t: the noisy input, `[B, ...]`.
    alpha_bar: alpha-bar of x_t, broadcastable to it.
    prediction: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to the data range [-1, 1] and recompute eps from it, so the
      pair stays consistent: x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.
    threshold: None, or the percentile p of Imagen's dynamic thresholding
      (`thresholding.dynamic_threshold`), applied like clip_x0 (eps recomputed). Applied before
      clip_x0 when both are set.

  Returns:
    `(x0, eps)`, each shaped like x_t.
  """
  alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)
  x0, eps = diffusion.x0_eps_from_output(model_output, x_t, alpha, sigma, prediction)
  if threshold is not None:
    x0 = thresholding.dynamic_threshold(x0, threshold)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  if clip_x0 or threshold is not None:
    # At alpha-bar 1 (sigma 0) x_t is x0 itself; keep eps finite there.
    eps = diffusion.eps_from_x0(x_t, x0, alpha, jnp.maximum(sigma, 1e-20))
  return x0, eps


def edm_sigma(alpha_bar: jax.Array) -> jax.Array:
  """EDM's noise level sqrt((1 - ab) / ab) of alpha-bar (Karras et al. 2022, table 1, VP column):
  x_t = sqrt(ab) (x0 + sigma eps). 0 at alpha-bar 1."""
  return jnp.sqrt((1.0 - alpha_bar) / alpha_bar)
