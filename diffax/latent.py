"""Latent diffusion's glue between an autoencoder and a denoiser (Rombach et al. 2022, sec. 3-4).

A latent diffusion model is an ordinary denoiser trained on `scale * z`, z the autoencoder's
latent of an image, and sampled to latents that the decoder turns back into images. The scale
makes the latents unit-variance, so that the noise schedule, designed for data of unit scale,
fits them (Stable Diffusion's 0.18215 is this number for its autoencoder):

  scale = diffax.latent.scale_factor(z_train)        # 1 / std of training latents
  z = diffax.latent.encode(ae, ae_params, x, scale)  # images -> scaled latents (posterior mean)
  z = diffax.latent.encode(ae, ae_params, x, scale,  # or a posterior draw, keyed per example
                           noise=diffax.latent.noise_per_example(rng, index, ae.latent_shape))
  x = diffax.latent.decode(ae, ae_params, z, scale)  # scaled latents -> images
  known = diffax.latent.downsample_mask(mask, ae.factor)   # inpainting in latent space

`ae` is a `diffax.models.autoencoder.Autoencoder`; nothing here depends on which one.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def scale_factor(latents) -> float:
  """1 / the standard deviation of `latents` over all entries (centered, as Stable Diffusion's
  `1 / latents.flatten().std()`), as a Python float computed in float64.

  Raises:
    ValueError: when the latents are constant (no scale makes them unit-variance) or not
      finite.
  """
  z = np.asarray(latents, np.float64)
  std = float(z.std())
  if not np.isfinite(std) or std <= 0:
    raise ValueError(f"the latents' standard deviation is {std}: no scale factor makes them "
                     f"unit-variance (is the autoencoder trained?)")
  return 1.0 / std


def encode(ae, params, x: jax.Array, scale, *, noise: Optional[jax.Array] = None) -> jax.Array:
  """Images -> scaled latents: `scale * z`, z the posterior mean, or with `noise` the posterior
  draw `mean + std * noise`.

  Args:
    ae: the autoencoder.
    params: its params.
    x: images `[B, *ae.sample_shape]` in [-1, 1].
    scale: the scale factor (a float or a scalar array).
    noise: standard normal `[B, *ae.latent_shape]` for a posterior draw (keyed as the caller
      needs, e.g. per example), or None for the mean.

  Returns:
    `f32[B, *ae.latent_shape]`.
  """
  mean, logvar = ae.encode(params, x)
  z = mean if noise is None else mean + jnp.exp(0.5 * logvar) * noise
  return z * scale


def noise_per_example(rng: jax.Array, index: jax.Array, shape) -> jax.Array:
  """Standard normal draws `[B, *shape]` whose row i depends on `rng` and `index[i]` alone, so
  an example draws the same whatever batch (or micro-batch) it is in."""
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)  # [B]
  return jax.vmap(lambda key: jax.random.normal(key, tuple(shape)))(keys)


def decode(ae, params, z: jax.Array, scale) -> jax.Array:
  """Scaled latents `[B, *ae.latent_shape]` -> images `f32[B, *ae.sample_shape]`."""
  return ae.decode(params, z / scale)


def downsample_mask(mask, factor: int):
  """An inpainting mask of pixels -> the mask of latent positions (True = known).

  A latent position is known when every pixel of its `factor x factor` block is known, in
  every channel: the latent of a partly known block is generated, so that no unknown pixel is
  pinned to the init image. Known pixels near the mask's border therefore come out generated
  too (up to `factor - 1` pixels of them), and every known pixel is the autoencoder's
  reconstruction of the init image rather than the pixel itself.

  Args:
    mask: bool (or nonzero = known) `[..., H, W, C]`, H and W divisible by `factor`.
    factor: the autoencoder's downsampling factor f.

  Returns:
    bool `[..., H / f, W / f, 1]` (numpy for numpy input), to broadcast over latent channels.
  """
  xp = jnp if isinstance(mask, jax.Array) else np
  mask = xp.asarray(mask) != 0
  *lead, height, width, channels = mask.shape
  if height % factor or width % factor:
    raise ValueError(f"the mask's {height}x{width} pixels do not split into "
                     f"{factor}x{factor} blocks (the autoencoder's downsampling factor)")
  blocks = mask.reshape(*lead, height // factor, factor, width // factor, factor, channels)
  return blocks.all(axis=(-4, -2, -1))[..., None]
