"""Keeping x0 estimates in the data range: static clipping and Imagen's dynamic thresholding.

Large guidance scales push the model's x0 estimate far outside [-1, 1], and a sampler that keeps
stepping from such estimates saturates its images. Dynamic thresholding (Saharia et al. 2022,
sec. 2.3) rescales each sample by a high percentile of its own |x0| instead of clipping all of
them at 1.
"""

import jax
import jax.numpy as jnp


def dynamic_threshold(x0: jax.Array, percentile) -> jax.Array:
  """Imagen's dynamic thresholding of x0 estimates (Saharia et al. 2022, sec. 2.3).

  Per sample, s = max(1, quantile_p(|x0|)); x0 is clipped to [-s, s] and divided by s. With s = 1
  (most of the sample already in [-1, 1]) it is static clipping; otherwise the sample is pulled
  back into [-1, 1] without flattening every saturated pixel to the same value.

  Args:
    x0: x0 estimates, `[B, ...]`.
    percentile: p in (0, 1], a float or a traced scalar (Imagen uses 0.995).

  Returns:
    The thresholded estimates, shaped like x0, every entry in [-1, 1].
  """
  flat = jnp.abs(x0.reshape(x0.shape[0], -1))  # [B, D]
  s = jnp.quantile(flat, jnp.asarray(percentile, flat.dtype), axis=1)  # [B]
  s = jnp.maximum(s, 1.0).reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
  return jnp.clip(x0, -s, s) / s
