"""Compile a sampler once; change its settings at run time without recompiling.

`make_sampler` fixes what decides the program (the model function, sampler, sample shape, the
longest table, the prediction type, clipping/thresholding, whether guidance is on) and returns a
`CompiledSampler`. Everything else is a traced `Knobs` value: the timestep table and how many of
its rows run (the number of steps, up to `max_steps`), eta, the guidance scale, the condition,
the inpainting mask and image, RePaint's resample count, the SDEdit image and strength, and the
samples' indices in the request. Changing any of them reuses the compiled program; `jax.vmap`
over them (or over seeds) is a sweep from one compile:

  model = diffax.models.create(sample_shape=(32, 32, 3), num_classes=10, ...)
  sample_fn = diffax.sampling.make_sampler(model.apply_fn, schedule, (16, 32, 32, 3),
                                           sampler="dpmpp_2m", max_steps=50, spacing="karras",
                                           null_cond=model.null_cond)   # guidance on
  cond = {"label": jnp.full((16,), 3)}
  x = sample_fn(params, jax.random.key(0), num_steps=20, cond=cond, guidance_scale=3.0)
  x = sample_fn(params, jax.random.key(1), num_steps=35, cond=cond, guidance_scale=1.5)
  sweep = jax.jit(jax.vmap(                                    # [4, 16, 32, 32, 3], one compile
      lambda w: sample_fn(params, jax.random.key(0), num_steps=20, cond=cond,
                          guidance_scale=w)))(jnp.array([0.0, 1.0, 3.0, 7.5]))
  # Inpainting (mask True = known pixel) and SDEdit are knobs too:
  x = sample_fn(params, rng, cond=cond, x_known=image, mask=mask, resample=4)
  x = sample_fn(params, rng, cond=cond, init_image=image, strength=0.6)

`apply_fn(params, x_t, t, cond) -> output` is the model contract (`diffax.models`); it is a
static argument (compiled once per function object), `params` are traced. Under your own
`jax.jit` (e.g. with output shardings), call `sample_fn.run(params, rng, knobs)` with
`knobs = sample_fn.knobs(...)` built outside it.
"""

import dataclasses
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffax import conditioning
from diffax import diffusion
from diffax.sampling import ddim
from diffax.sampling import ddpm
from diffax.sampling import dpm_solver
from diffax.sampling import editing
from diffax.sampling import euler_ancestral
from diffax.sampling import guidance
from diffax.sampling import heun
from diffax.sampling import loop
from diffax.sampling import spacing as spacing_lib
from diffax.schedules import Schedule

# config.sample.sampler -> factory(model_fn, *, eta, prediction, clip_x0, threshold) ->
# loop.Sampler. Model calls per step: 1, except heun (2; 1 on the last step).
SAMPLERS = {
    "ddpm": ddpm.sampler,
    "ddim": ddim.sampler,
    "dpmpp_2m": dpm_solver.dpmpp_2m,
    "heun": heun.sampler,
    "euler_ancestral": euler_ancestral.sampler,
}

# eta when none is given: 0 (deterministic) except for the ancestral sampler. DDPM, Heun and
# DPM-Solver++ ignore eta.
DEFAULT_ETA = {"euler_ancestral": euler_ancestral.DEFAULT_ETA}


class Spec(NamedTuple):
  """The static settings: a new value is a new program."""
  sampler: str = "ddim"
  shape: tuple = ()
  prediction: str = "eps"
  clip_x0: bool = False
  threshold: Optional[float] = None     # dynamic thresholding percentile, None: off
  guided: bool = False                  # classifier-free guidance on (Knobs.null_cond set)
  num_train_steps: int = 1000           # T, for SDEdit's strength * T


class Knobs(NamedTuple):
  """The traced settings; new values reuse the compiled program. None fields switch a feature
  off (a different program, as their pytree structure differs)."""
  table: loop.Table                     # [max_steps] rows, `num_active` of them active
  eta: jax.Array                        # f32[]
  guidance_scale: jax.Array             # f32[] or f32[B]; used when Spec.guided
  ids: jax.Array                        # i32[B] each sample's index in the request
  cond: Optional[dict] = None           # the condition, arrays [B, ...] (diffax.conditioning)
  null_cond: Optional[dict] = None      # the model's null condition (guidance; no batch axis)
  x_known: Optional[jax.Array] = None   # f32[B, ...] inpainting: the known image
  mask: Optional[jax.Array] = None      # bool[B, ...] inpainting: True where known
  resample: Optional[jax.Array] = None  # i32[] RePaint resample count r >= 1
  init_image: Optional[jax.Array] = None  # f32[B, ...] SDEdit: the image to edit
  strength: Optional[jax.Array] = None  # f32[] SDEdit strength in (0, 1]


def run(apply_fn: Callable, params, rng: jax.Array, knobs: Knobs, spec: Spec) -> jax.Array:
  """Draws samples: the pure program `make_sampler` compiles. Call it under `jax.jit` with
  `apply_fn` and `spec` static.

  Args:
    apply_fn: `apply_fn(params, x_t, t, cond) -> output`.
    params: the model parameters, any pytree.
    rng: a PRNG key.
    knobs: the traced settings.
    spec: the static settings.

  Returns:
    The samples, f32 `spec.shape`.
  """
  cond = knobs.cond
  if spec.guided and cond is None:  # a conditional model's unconditional samples
    cond = conditioning.nullify(None, knobs.null_cond, spec.shape[0])
  if spec.guided and knobs.cond is not None:
    model_fn = guidance.classifier_free_model(apply_fn, params, cond, knobs.null_cond,
                                              knobs.guidance_scale)
  else:
    model_fn = guidance.conditional_model(apply_fn, params, cond)
  sampler = SAMPLERS[spec.sampler](model_fn, eta=knobs.eta, prediction=spec.prediction,
                                   clip_x0=spec.clip_x0, threshold=spec.threshold)
  if knobs.mask is not None:
    sampler = editing.inpaint(sampler, knobs.x_known, knobs.mask, knobs.resample)
  table, x_init = knobs.table, None
  if knobs.init_image is not None:
    # The loop's own x_T: strength 1 starts from (almost) the sample an unedited run draws.
    noise = loop.initial_noise(rng, spec.shape, knobs.ids)
    table, x_init = editing.sdedit_start(table, knobs.init_image, knobs.strength,
                                         spec.num_train_steps, noise)
  return loop.run(sampler, table, spec.shape, rng, x_init=x_init, ids=knobs.ids)


_run = jax.jit(run, static_argnames=("apply_fn", "spec"))


def _concrete(value) -> bool:
  return not isinstance(value, jax.core.Tracer)


@dataclasses.dataclass(frozen=True)
class CompiledSampler:
  """A sampler compiled once for `spec`; see the module docstring. Build with `make_sampler`."""
  apply_fn: Callable
  schedule: Schedule
  spec: Spec
  max_steps: int
  spacing: str = "linspace"
  null_cond: Optional[dict] = None

  def table(self, num_steps: Optional[int] = None, *, timesteps=None,
            spacing: Optional[str] = None) -> loop.Table:
    """The `[max_steps]` table of `num_steps` (default max_steps) steps of `spacing` (default the
    sampler's), or of explicit descending `timesteps` (length <= max_steps), padded."""
    T = self.schedule.num_steps
    if timesteps is None:
      num_steps = self.max_steps if num_steps is None else num_steps
      if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
      if not 1 <= num_steps <= self.max_steps:
        raise ValueError(f"num_steps must lie in [1, max_steps={self.max_steps}], got "
                         f"{num_steps}; make_sampler(max_steps=...) sets the compiled maximum")
      timesteps = spacing_lib.timesteps(
          T, int(num_steps), self.spacing if spacing is None else spacing,
          alphas_cumprod=np.asarray(self.schedule.alphas_cumprod))
    elif num_steps is not None:
      raise ValueError("give num_steps or timesteps, not both")
    n = np.shape(timesteps)[0]
    if not 1 <= n <= self.max_steps:
      raise ValueError(f"timesteps has {n} entries; it needs 1 to max_steps={self.max_steps}")
    if _concrete(timesteps):
      ts = np.asarray(timesteps)
      if not (np.all(np.diff(ts) < 0) and ts.min() >= 0 and ts.max() < T):
        raise ValueError(f"timesteps must be strictly decreasing within [0, {T}), got {ts}")
    if _concrete(timesteps):  # on the host: no per-length scatter to compile
      padded = np.zeros((self.max_steps,), np.int32)
      padded[:n] = np.asarray(timesteps)
    else:
      padded = jnp.zeros((self.max_steps,), jnp.int32).at[:n].set(timesteps)
    return loop.make_table(self.schedule, padded, n)

  def knobs(self, *, num_steps: Optional[int] = None, timesteps=None,
            spacing: Optional[str] = None, table: Optional[loop.Table] = None, eta=None,
            guidance_scale=None, cond=None, x_known=None, mask=None, resample=1,
            init_image=None, strength=None, ids=None) -> Knobs:
    """Checks the run-time settings and packs them as traced `Knobs`.

    Args:
      num_steps: how many steps to run, in [1, max_steps] (default max_steps).
      timesteps: an explicit descending table of training timesteps instead (<= max_steps).
      spacing: a key of `SPACINGS`, overriding the sampler's default spacing.
      table: a ready `loop.Table` of max_steps rows instead (e.g. custom noise levels).
      eta: stochasticity (DDIM, Euler ancestral); None: the sampler's default (`DEFAULT_ETA`).
      guidance_scale: w of classifier-free guidance (needs null_cond): 0 unconditional,
        1 conditional, > 1 guided; a scalar or `[B]`. Default 1.
      cond: the condition, a dict of `[B, ...]` arrays (a value without the batch axis is
        repeated over it); None: unconditional (with guidance on, the null condition).
      x_known, mask: inpainting: the known image and a bool mask (True where known), each
        broadcastable to the sample shape.
      resample: RePaint's resample count r >= 1 (inpainting only).
      init_image: SDEdit: the image to edit, broadcastable to the sample shape.
      strength: SDEdit strength in (0, 1] (default 1): start at t0 = strength * T.
      ids: `i32[B]`, each sample's index in the whole request (default 0 .. B-1): sample i
        depends on the seed and ids[i] alone, whatever batch it is drawn in.

    Returns:
      The `Knobs`.
    """
    spec = self.spec
    if table is None:
      table = self.table(num_steps, timesteps=timesteps, spacing=spacing)
    elif num_steps is not None or timesteps is not None:
      raise ValueError("give table, or num_steps/timesteps, not both")
    elif table.t.shape != (self.max_steps,):
      raise ValueError(f"table must have max_steps={self.max_steps} rows, got {table.t.shape}")
    eta = DEFAULT_ETA.get(spec.sampler, 0.0) if eta is None else eta
    if isinstance(eta, numbers.Real) and not eta >= 0:
      raise ValueError(f"eta must be >= 0, got {eta}")
    if guidance_scale is not None and not spec.guided:
      raise ValueError("guidance_scale needs classifier-free guidance: make_sampler(null_cond="
                       "model.null_cond) with a model trained with condition dropout")
    guidance_scale = 1.0 if guidance_scale is None else guidance_scale
    batch = spec.shape[0]
    if cond is not None:
      cond = self._check_cond(cond, batch)
    ids = jnp.arange(batch, dtype=jnp.int32) if ids is None else jnp.asarray(ids, jnp.int32)
    if ids.shape != (batch,):
      raise ValueError(f"ids must be [{batch}] (one index per sample), got shape {ids.shape}")
    if (x_known is None) != (mask is None):
      raise ValueError("inpainting needs both x_known and mask")
    x_known = editing.broadcast_image("x_known", x_known, spec.shape)
    if mask is not None:
      mask = editing.broadcast_mask(mask, spec.shape)
      if isinstance(resample, bool) or not isinstance(resample, (int, np.integer, jax.Array)) or (
          _concrete(resample) and int(resample) < 1):
        raise ValueError(f"resample must be an int >= 1, got {resample!r}")
      resample = jnp.asarray(resample, jnp.int32)
    else:
      resample = None
    init_image = editing.broadcast_image("init_image", init_image, spec.shape)
    if init_image is None and strength is not None:
      raise ValueError("strength needs init_image (SDEdit)")
    if init_image is not None:
      strength = 1.0 if strength is None else strength
      if isinstance(strength, numbers.Real) and not 0 < strength <= 1:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
      strength = jnp.asarray(strength, jnp.float32)
    if cond is not None:
      chex.assert_tree_shape_prefix(cond, (batch,))
    null_cond = None
    if spec.guided:
      null_cond = {k: jnp.asarray(v) for k, v in self.null_cond.items()}
    return Knobs(table=table, eta=jnp.asarray(eta, jnp.float32),
                 guidance_scale=jnp.asarray(guidance_scale, jnp.float32), ids=ids, cond=cond,
                 null_cond=null_cond, x_known=x_known, mask=mask, resample=resample,
                 init_image=init_image, strength=strength)

  def _check_cond(self, cond, batch: int) -> dict:
    """The condition as a dict of `[batch, ...]` arrays; labels checked against the null label
    when they are concrete (`null_cond["label"]` is the number of classes)."""
    if not isinstance(cond, dict):
      raise ValueError(f"cond must be a dict of arrays (e.g. {{'label': labels}}), got "
                       f"{type(cond).__name__}")
    conditioning.check_keys(cond)
    out = {}
    for key, value in cond.items():
      value = jnp.asarray(value)
      if key == "label":
        value = jnp.broadcast_to(value.astype(jnp.int32), (batch,))
        num_classes = (self.null_cond or {}).get("label")
        if num_classes is not None and _concrete(cond[key]):
          labels = np.asarray(cond[key])
          if labels.size and not (labels.min() >= 0 and labels.max() < int(num_classes)):
            raise ValueError(f"cond['label'] must lie in [0, {int(num_classes)}) (the model's "
                             f"classes), got {np.unique(labels)}")
      elif value.shape[:1] != (batch,):
        value = jnp.broadcast_to(value, (batch,) + value.shape)
      out[key] = value
    return out

  def run(self, params, rng: jax.Array, knobs: Knobs) -> jax.Array:
    """The compiled program: samples, f32 `shape`, from traced params, rng and knobs."""
    return _run(self.apply_fn, params, rng, knobs, spec=self.spec)

  def __call__(self, params, rng: jax.Array, **knobs) -> jax.Array:
    """`run(params, rng, knobs(**knobs))`: samples, f32 `shape`."""
    return self.run(params, rng, self.knobs(**knobs))


def check_shape(shape) -> tuple:
  try:
    shape = tuple(int(d) for d in shape)
  except TypeError:
    raise ValueError(f"shape must be a tuple of ints (B, ...), got {shape!r}") from None
  if not shape or min(shape) < 1:
    raise ValueError(f"shape must be a non-empty tuple of positive ints (B, ...), got {shape}")
  return shape


def check_sampler(sampler: str) -> None:
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")


def make_sampler(apply_fn: Callable, schedule: Schedule, shape, *, sampler: str = "ddim",
                 max_steps: int = 50, prediction: str = "eps", spacing: str = "linspace",
                 clip_x0: bool = False, threshold: Optional[float] = None,
                 null_cond: Optional[Mapping[str, Any]] = None) -> CompiledSampler:
  """A sampler compiled once (on first call) for these static settings; see the module docstring.

  Args:
    apply_fn: `apply_fn(params, x_t, t, cond) -> output`, t `i32[B]` in [0, T); hashable (a
      static argument: the compiled program is reused for every call with the same function).
    schedule: the training schedule (its alpha-bars fill the tables).
    shape: the sample shape `(B, ...)`.
    sampler: a key of `SAMPLERS`.
    max_steps: the longest table; any num_steps in [1, max_steps] runs without recompiling.
    prediction: what the model predicts: "eps", "x0" or "v".
    spacing: the default key of `SPACINGS` for tables built from num_steps.
    clip_x0: clip every x0 estimate to [-1, 1].
    threshold: None, or Imagen's dynamic thresholding percentile p in (0, 1] (e.g. 0.995).
    null_cond: the model's null condition (`diffax.models.Model.null_cond`) of a model
      trained with condition dropout: turns on classifier-free guidance (one batched call per
      step on [cond; null]). None: no guidance; a cond given at run time goes straight to the
      model.

  Returns:
    The `CompiledSampler`: `sample_fn(params, rng, **knobs)`.

  Raises:
    ValueError: on an unknown sampler, prediction or spacing, a bad shape, max_steps outside
      [1, T], a threshold outside (0, 1], an empty null_cond or an unhashable apply_fn.
  """
  check_sampler(sampler)
  diffusion.check_prediction(prediction)
  if spacing not in spacing_lib.SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {sorted(spacing_lib.SPACINGS)}")
  shape = check_shape(shape)
  T = schedule.num_steps
  if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or not (
      1 <= max_steps <= T):
    raise ValueError(f"max_steps must be an int in [1, {T}], got {max_steps!r}")
  if threshold is not None and not 0 < threshold <= 1:
    raise ValueError(f"threshold (a percentile) must lie in (0, 1], got {threshold}")
  if null_cond is not None:
    if not null_cond:
      raise ValueError("null_cond is empty: guidance needs a conditional model's null "
                       "condition (e.g. {'label': num_classes}); pass None for no guidance")
    conditioning.check_keys(null_cond)
  if not callable(apply_fn):
    raise ValueError(f"apply_fn must be callable, got {apply_fn!r}")
  try:
    hash(apply_fn)
  except TypeError:
    raise ValueError("apply_fn must be hashable (a static argument of the compiled sampler)"
                     ) from None
  spec = Spec(sampler=sampler, shape=shape, prediction=prediction, clip_x0=bool(clip_x0),
              threshold=None if threshold is None else float(threshold),
              guided=null_cond is not None, num_train_steps=T)
  return CompiledSampler(apply_fn=apply_fn, schedule=schedule, spec=spec,
                         max_steps=int(max_steps), spacing=spacing,
                         null_cond=None if null_cond is None else dict(null_cond))


# sample(): the original one-call API for a model_fn(x_t, t), on the same compiled program.

@dataclasses.dataclass(frozen=True)
class _Unbound:
  """`apply_fn(params, x_t, t)` of a parameter-free `model_fn(x_t, t)`; equal wrappers of the same
  function hash alike, so repeated `sample()` calls hit the compile cache."""
  model_fn: Callable

  def __call__(self, params, x_t, t):
    del params
    return self.model_fn(x_t, t)


def _call_partial(model_fn, x_t, t):
  """`apply_fn(params, x_t, t)` where the 'params' are a `jax.tree_util.Partial` model_fn."""
  return model_fn(x_t, t)


def sample(model_fn: Callable, s: Schedule, shape, rng: jax.Array, *, sampler: str = "ddpm",
           num_steps: Optional[int] = None, eta=None, prediction: str = "eps",
           clip_x0: bool = False, spacing: str = "linspace", threshold: Optional[float] = None
           ) -> jax.Array:
  """Draws samples by running a sampler from pure noise to x0 in one jitted `lax.scan`.

  Compiled once per (model_fn, shape, sampler, number of steps, prediction, clip_x0,
  threshold); the schedule, rng, timestep table and eta are traced, so changing them does not
  recompile. To vary the number of steps, guidance or editing without recompiling, use
  `make_sampler`.

  Args:
    model_fn: `model_fn(x_t, t) -> output` shaped like x_t, t `i32[B]` in [0, T); a hashable
      callable, or a `jax.tree_util.Partial` whose bound arguments are then traced.
    s: the training schedule.
    shape: the sample shape `(B, ...)`.
    rng: a PRNG key.
    sampler: a key of `SAMPLERS`.
    num_steps: None for all T steps; n in [1, T] for the n timesteps of `spacing` (respaced
      DDPM, or DDIM on that subset).
    eta: stochasticity of DDIM / Euler ancestral; None: the sampler's default (0, ancestral 1).
    prediction: what the model predicts: "eps", "x0" or "v".
    clip_x0: clip every x0 estimate to [-1, 1].
    spacing: a key of `SPACINGS`, how the n timesteps are picked.
    threshold: None, or the dynamic thresholding percentile (see `make_sampler`).

  Returns:
    The samples, f32 `shape`.

  Raises:
    ValueError: on an unknown sampler, prediction or spacing, num_steps outside [1, T], a bad
      shape, a negative eta, or an unhashable model_fn.
  """
  check_sampler(sampler)
  diffusion.check_prediction(prediction)
  T = s.num_steps
  n = T if num_steps is None else num_steps
  alphas_cumprod = np.asarray(s.alphas_cumprod) if spacing == "karras" else None
  ts = spacing_lib.timesteps(T, n, spacing, alphas_cumprod=alphas_cumprod)
  shape = check_shape(shape)
  if isinstance(eta, numbers.Real) and not eta >= 0:
    raise ValueError(f"eta must be >= 0, got {eta}")
  if not callable(model_fn):
    raise ValueError(f"model_fn must be callable, got {model_fn!r}")
  if isinstance(model_fn, jax.tree_util.Partial):
    apply_fn, params = _call_partial, model_fn
  else:
    try:
      hash(model_fn)
    except TypeError:
      raise ValueError("model_fn must be hashable (it is a static argument of the compiled "
                       "sampler); wrap it in jax.tree_util.Partial") from None
    apply_fn, params = _Unbound(model_fn), None
  eta = DEFAULT_ETA.get(sampler, 0.0) if eta is None else eta
  spec = Spec(sampler=sampler, shape=shape, prediction=prediction, clip_x0=bool(clip_x0),
              threshold=None if threshold is None else float(threshold), num_train_steps=T)
  knobs = Knobs(table=loop.make_table(s, ts), eta=jnp.asarray(eta, jnp.float32),
                guidance_scale=jnp.ones((), jnp.float32),
                ids=jnp.arange(shape[0], dtype=jnp.int32))
  return _run(apply_fn, params, rng, knobs, spec=spec)
