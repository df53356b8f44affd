"""How a super-resolution U-Net reads `cond["low_res"]` and `cond["noise_level"]`.

SR3 (Saharia et al. 2022, "Image Super-Resolution via Iterative Refinement") conditions the
denoiser on the low-resolution image by upsampling it (bicubic) to the output size and
concatenating it to x_t along the channels. Imagen (Saharia et al. 2022, sec. 2.5) adds
noise-conditioning augmentation: the low-res input is noised (`diffax.conditioning.
augment_low_res`) and the network is told how much, through an embedding of the noise level
added to the time embedding, so the model learns to correct the artefacts of the stage below.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models import layers

# noise_level in [0, 1] is embedded like a timestep of a 1000-step schedule.
NOISE_LEVEL_SCALE = 1000.0


def low_res_shape(sample_shape, low_res_size: int) -> tuple:
  """The shape of one low-res input for `sample_shape` (H, W, C): (h, W * h / H, C)."""
  height, width, channels = sample_shape
  factor = height // low_res_size
  return (low_res_size, width // factor, channels)


def upsample(low_res: jax.Array, spatial_shape) -> jax.Array:
  """Bicubic upsampling of `[B, h, w, C]` to `[B, *spatial_shape, C]` (SR3's input)."""
  shape = (low_res.shape[0], *spatial_shape, low_res.shape[-1])
  return jax.image.resize(low_res.astype(jnp.float32), shape, method="bicubic")


class NoiseLevelEmbedding(nn.Module):
  """sinusoidal(1000 * noise_level) -> Dense -> SiLU -> Dense, added to the time embedding.

  Attributes:
    features: the time embedding's width.
    dtype: compute dtype.
    fast: the layers' hand-written gradients (`layers`).
  """
  features: int
  dtype: Any = jnp.float32
  fast: bool = True

  @nn.compact
  def __call__(self, noise_level):
    """noise_level `f32[B]` in [0, 1] -> `[B, features]`."""
    emb = layers.timestep_embedding(noise_level * NOISE_LEVEL_SCALE, self.features // 4)
    emb = layers.Dense(self.features, dtype=self.dtype, fast=self.fast,
                       name="dense0")(emb.astype(self.dtype))
    return layers.Dense(self.features, dtype=self.dtype, fast=self.fast,
                        name="dense1")(nn.silu(emb))
