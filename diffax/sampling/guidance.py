"""Class-conditional sampling and classifier-free guidance (Ho & Salimans 2022).

A class-conditional model trained with label dropout (`losses`: the label replaced by the null
label `num_classes` with some probability) is both a conditional and an unconditional model.
Guidance extrapolates from the unconditional prediction towards the conditional one:
  out = out_uncond + w (out_cond - out_uncond).
Convention here: **w is the guidance scale of diffusers and Imagen**, so w = 1 is plain
conditional sampling, w = 0 unconditional, and w > 1 guided (sharper, less diverse). Ho &
Salimans write the same rule as (1 + w') eps_cond - w' eps_uncond: their w' is w - 1.

The rule is affine with weights summing to 1, and every conversion between the eps, x0 and v
parameterizations is affine in the model output at a fixed x_t, so combining raw outputs is the
same as combining eps (or x0) estimates: this works for any `prediction`.

Both halves come from ONE model call on the doubled batch [x; x] with labels [cond; null], so a
guided step costs one (twice as wide) forward pass, not two.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def conditional_model(apply_fn: Callable, params, cond: Optional[jax.Array]) -> Callable:
  """`model_fn(x_t, t)` of `apply_fn(params, x_t, t[, cond])`; cond None calls the model without
  labels (an unconditional model, or a conditional one's null label)."""
  if cond is None:
    return lambda x_t, t: apply_fn(params, x_t, t)
  return lambda x_t, t: apply_fn(params, x_t, t, cond)


def guide(out_cond: jax.Array, out_uncond: jax.Array, guidance_scale) -> jax.Array:
  """out_uncond + w (out_cond - out_uncond); w a scalar or per-sample `[B]`."""
  w = jnp.asarray(guidance_scale, out_cond.dtype)
  w = w.reshape(w.shape + (1,) * (out_cond.ndim - w.ndim))
  return out_uncond + w * (out_cond - out_uncond)


def classifier_free_model(apply_fn: Callable, params, cond: jax.Array, guidance_scale,
                          null_label: int) -> Callable:
  """The guided `model_fn(x_t, t)`: one batched call of the conditional and unconditional halves.

  Args:
    apply_fn: `apply_fn(params, x_t, t, cond) -> output` of a class-conditional model.
    params: its parameters (traced).
    cond: the class labels, `i32[B]` in [0, null_label).
    guidance_scale: w, a scalar or `f32[B]` (traced): 0 unconditional, 1 conditional, > 1 guided.
    null_label: the label the model was trained with for "no label" (`num_classes`).

  Returns:
    `model_fn(x_t, t) -> output`, x_t `[B, ...]`, t `i32[B]`: the guided output, shaped like x_t.
  """
  cond = jnp.asarray(cond, jnp.int32)  # [B]

  def model_fn(x_t, t):
    batch = x_t.shape[0]
    labels = jnp.concatenate([cond, jnp.full((batch,), null_label, jnp.int32)])  # [2B]
    out = apply_fn(params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), labels)
    return guide(out[:batch], out[batch:], guidance_scale)

  return model_fn
