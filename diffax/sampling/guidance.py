"""Conditional sampling and classifier-free guidance (Ho & Salimans 2022), for every kind of
condition.

A model trained with condition dropout (`diffax.losses`: some examples' condition replaced by
the model's null condition, `diffax.conditioning.drop`) is both a conditional and an
unconditional model. Guidance extrapolates from the unconditional prediction towards the
conditional one:
  out = out_uncond + w (out_cond - out_uncond).
Convention here: **w is the guidance scale of diffusers and Imagen**, so w = 1 is plain
conditional sampling, w = 0 unconditional, and w > 1 guided (sharper, less diverse). Ho &
Salimans write the same rule as (1 + w') eps_cond - w' eps_uncond: their w' is w - 1.

The rule is affine with weights summing to 1, and every conversion between the eps, x0 and v
parameterizations is affine in the model output at a fixed x_t, so combining raw outputs is the
same as combining eps (or x0) estimates: this works for any `prediction`.

Both halves come from ONE model call on the doubled batch [x; x] with conditions
[cond; nullify(cond)], so a guided step costs one (twice as wide) forward pass, not two. Labels,
embeddings and text take the same path: only the model's null condition differs.
"""

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from diffax import conditioning


def conditional_model(apply_fn: Callable, params, cond: conditioning.Cond) -> Callable:
  """`model_fn(x_t, t)` of `apply_fn(params, x_t, t, cond)`; with cond None the model is called
  as `apply_fn(params, x_t, t)` (an unconditional model needs no cond argument)."""
  if cond is None:
    return lambda x_t, t: apply_fn(params, x_t, t)
  return lambda x_t, t: apply_fn(params, x_t, t, cond)


def guide(out_cond: jax.Array, out_uncond: jax.Array, guidance_scale) -> jax.Array:
  """out_uncond + w (out_cond - out_uncond); w a scalar or per-sample `[B]`."""
  w = jnp.asarray(guidance_scale, out_cond.dtype)
  w = w.reshape(w.shape + (1,) * (out_cond.ndim - w.ndim))
  return out_uncond + w * (out_cond - out_uncond)


def classifier_free_model(apply_fn: Callable, params, cond: Mapping[str, jax.Array],
                          null_cond: Mapping[str, jax.Array], guidance_scale) -> Callable:
  """The guided `model_fn(x_t, t)`: one batched call of the conditional and unconditional halves.

  Args:
    apply_fn: `apply_fn(params, x_t, t, cond) -> output` of a conditional model.
    params: its parameters (traced).
    cond: the condition, a dict of `[B, ...]` arrays (`diffax.conditioning`).
    null_cond: the model's null condition (arrays without the batch axis); its keys are the
      ones guidance drops, the others (e.g. a super-resolution model's low_res) are kept.
    guidance_scale: w, a scalar or `f32[B]` (traced): 0 unconditional, 1 conditional, > 1 guided.

  Returns:
    `model_fn(x_t, t) -> output`, x_t `[B, ...]`, t `i32[B]`: the guided output, shaped like x_t.
  """
  both = conditioning.concat(cond, conditioning.nullify(cond, null_cond))  # [2B, ...]

  def model_fn(x_t, t):
    batch = x_t.shape[0]
    out = apply_fn(params, jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]), both)
    return guide(out[:batch], out[batch:], guidance_scale)

  return model_fn
