"""The conditioning pytree: one `cond` for every kind of condition, one way to drop it.

`cond` is None or a dict of arrays with a leading batch axis. The keys a model reads are fixed
by its configuration:

  label         i32[B]           class labels
  embedding     f32[B, D]        a vector condition (an image or text embedding)
  context       f32[B, L, D]     a token sequence, read by cross-attention
  context_mask  bool[B, L]       which of its tokens are real
  low_res       f32[B, h, w, C]  a low-resolution image (super-resolution)
  noise_level   f32[B]           the noise added to low_res (noise-conditioning augmentation)

A model declares its **null condition**: for each key that can be dropped, the value it takes
when dropped, without the batch axis (e.g. `{"label": 10}` for ten classes, whose null label is
10; `{"context": zeros[1, D], "context_mask": [False]}` for text: the empty caption, a sequence
with no real token). A null value is repeated to the shape of the value it replaces, so one
null token serves captions of any length L. Keys absent from the null condition are never
dropped (a super-resolution model always sees its low-res input).

Classifier-free guidance (Ho & Salimans 2022) needs exactly two operations, written here once
for every kind of condition:
  - training drops the condition of some examples: `drop(cond, null, keep)`;
  - sampling evaluates the conditional and the unconditional model in one batched call on
    `concat(cond, nullify(cond, null))`.
"""

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

Cond = Optional[Mapping[str, Any]]

# Every key the models of diffax read (DESIGN.md); a cond with another key is a mistake.
KEYS = ("label", "embedding", "context", "context_mask", "low_res", "noise_level")


def batch_size(cond: Cond) -> Optional[int]:
  """The common leading axis of a cond's arrays, or None for an empty/None cond.

  Raises:
    ValueError: on an unknown key or arrays that disagree on the batch size.
  """
  if not cond:
    return None
  check_keys(cond)
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in cond.items()}
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(f"cond arrays need one common leading batch axis, got "
                     f"{ {k: np.shape(v) for k, v in cond.items()} }")
  return next(iter(sizes.values()))


def check_keys(cond: Cond, allowed=KEYS) -> None:
  """Raises ValueError naming the keys of `cond` outside `allowed`."""
  unknown = sorted(set(cond or ()) - set(allowed))
  if unknown:
    raise ValueError(f"cond has unknown key(s) {unknown}; the keys are {list(allowed)}")


def broadcast_null(null: Mapping[str, Any], batch: int) -> dict:
  """The null condition of a batch: each value repeated over a new leading axis of `batch`."""
  return {k: jnp.broadcast_to(jnp.asarray(v), (batch,) + jnp.shape(v)) for k, v in null.items()}


def nullify(cond: Cond, null: Mapping[str, Any], batch: Optional[int] = None) -> dict:
  """`cond` with every key of `null` replaced by its null value, the other keys kept.

  Args:
    cond: the condition, arrays `[B, ...]`, or None (then the null condition alone).
    null: the model's null condition (arrays without the batch axis).
    batch: B, needed only when cond is None.

  Returns:
    The unconditional counterpart of `cond`, `[B, ...]` arrays; a null value is repeated to
    the shape of the value it replaces (a null token sequence `[1, D]` to `[B, L, D]`).
  """
  batch = batch_size(cond) or batch
  if batch is None:
    raise ValueError("nullify needs a non-empty cond or the batch size")
  out = dict(cond or {})
  for key, value in broadcast_null(null, batch).items():
    out[key] = (jnp.broadcast_to(value.astype(jnp.asarray(out[key]).dtype), jnp.shape(out[key]))
                if key in out else value)
  return out


def drop(cond: Cond, null: Mapping[str, Any], keep: jax.Array) -> Cond:
  """Drops the condition of the examples where `keep` is False (classifier-free guidance).

  Args:
    cond: the batch's condition, arrays `[B, ...]`.
    null: the model's null condition, arrays without the batch axis; only its keys are dropped.
    keep: `bool[B]`, True where an example keeps its condition.

  Returns:
    The condition with each key of `null` replaced by its null value where keep is False.
  """
  if not cond or not null:
    return cond
  out = dict(cond)
  for key, value in null.items():
    if key not in out:
      continue
    x = out[key]
    k = keep.reshape(keep.shape + (1,) * (x.ndim - 1))
    out[key] = jnp.where(k, x, jnp.asarray(value, x.dtype))
  return out


def augment_low_res(low_res: jax.Array, noise_level, noise: jax.Array) -> jax.Array:
  """Noise-conditioning augmentation of a low-res image (Imagen, Saharia et al. 2022, 2.5).

  Variance-preserving: sqrt(1 - s^2) low_res + s noise, for the noise level s in [0, 1]
  (s = 0 leaves it unchanged, s = 1 leaves pure noise). The model is told s as
  `cond["noise_level"]`; training draws s at random, sampling fixes it.

  Args:
    low_res: `[B, h, w, C]` images in [-1, 1].
    noise_level: s, a scalar or `f32[B]`.
    noise: standard normal noise shaped like low_res.

  Returns:
    The augmented images, shaped like low_res.
  """
  s = jnp.asarray(noise_level, jnp.float32)
  s = s.reshape(s.shape + (1,) * (low_res.ndim - s.ndim))
  return jnp.sqrt(1.0 - jnp.square(s)) * low_res + s * noise


def concat(a: Cond, b: Cond) -> Cond:
  """Two conditions with the same keys joined along the batch axis (`[cond; null]`)."""
  if a is None and b is None:
    return None
  if set(a or ()) != set(b or ()):
    raise ValueError(f"cannot join conditions with keys {sorted(a or ())} and {sorted(b or ())}")
  return {k: jnp.concatenate([a[k], b[k]]) for k in a}


def take(cond: Cond, rows) -> Cond:
  """The rows `rows` of every array of `cond` (host or device arrays)."""
  if cond is None:
    return None
  return {k: v[rows] for k, v in cond.items()}
