"""Image editing with an unconditional sampler: inpainting and SDEdit.

Inpainting (replacement / RePaint, Lugmayr et al. 2022, eq. 8-9): after every step from t to t',
the known pixels are overwritten by a fresh draw of q(x_{t'} | x_known), so the sample carries
the known content at every noise level and the model fills the rest in agreement with it. The
last step lands on alpha-bar 1, where that draw is x_known itself: the known pixels come out
exactly. RePaint's resampling (its Algorithm 1 with jump length 1) repeats each step r times:
after a step, the sample is noised back from t' to t with q(x_t | x_{t'}) and the step is taken
again, which lets the generated region harmonize with the known one. A multistep solver
(DPM-Solver++(2M)) takes the repeated steps first order: its extrapolation from the previous
x0 estimate assumes one smooth trajectory, which re-noising breaks, and with it the repeats
amplify instead of contract.

SDEdit (Meng et al. 2022, Algorithm 1): start from a noised input image q(x_{t0} | x_init) at
t0 = strength * T instead of from pure noise, and run the sampler from there: the table rows
with t >= strength * T are skipped (as diffusers' img2img does), and the image is noised to the
level of the first row that runs. Strength 1 is an ordinary sample; strength -> 0 returns the
input image.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from diffax.sampling import loop


def noise_to(x0: jax.Array, alpha_bar: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of q(x | x0) = N(sqrt(ab) x0, (1 - ab) I) at alpha-bar ab (DDPM eq. 4); exactly x0 at
  ab = 1."""
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def inpaint(sampler: loop.Sampler, x_known: jax.Array, mask: jax.Array,
            resample=1) -> loop.Sampler:
  """Wraps a sampler so that the pixels where `mask` is True follow `x_known` (RePaint eq. 8).

  Args:
    sampler: any `loop.Sampler` (its carry may hold more than x; `final`/`with_x` reach x).
    x_known: the image whose masked pixels are kept, shaped like the samples `[B, ...]`.
    mask: bool, shaped like the samples: True where the pixel is known.
    resample: r >= 1 (int or traced i32): each step is taken r times, noising back in between
      (RePaint's resampling, jump length 1); 1 is plain replacement.

  Returns:
    The wrapped sampler. Its output equals x_known exactly where mask is True.
  """

  def attempt(carry, inputs: loop.StepInput, u):
    rng = loop.fold_in(inputs.rng, u)
    carry = sampler.step(carry, inputs._replace(rng=loop.fold_in(rng, 0)))
    x = sampler.final(carry)
    noise = loop.normal(loop.fold_in(rng, 1), x)
    known = noise_to(x_known, inputs.alpha_bar_prev, noise)
    return sampler.with_x(carry, jnp.where(mask, known, x))

  def step(carry, inputs: loop.StepInput):
    def resample_once(u, out):
      # q(x_t | x_{t'}): the forward process from alpha-bar_{t'} back to alpha-bar_t.
      x = sampler.final(out)
      ratio = inputs.alpha_bar / inputs.alpha_bar_prev
      noise = loop.normal(loop.fold_in(loop.fold_in(inputs.rng, u), 2), x)
      x_back = jnp.sqrt(ratio) * x + jnp.sqrt(1.0 - ratio) * noise
      return attempt(sampler.restart(sampler.with_x(carry, x_back)), inputs, u)

    return jax.lax.fori_loop(1, resample, resample_once, attempt(carry, inputs, 0))

  def final(carry):
    return jnp.where(mask, x_known, sampler.final(carry))

  return loop.Sampler(step, init=sampler.init, final=final, with_x=sampler.with_x,
                      restart=sampler.restart)


def sdedit_start(table: loop.Table, init_image: jax.Array, strength, num_train_steps: int,
                 noise: jax.Array) -> tuple[loop.Table, jax.Array]:
  """SDEdit's starting point: the table without its rows at t >= strength * T, and the input
  image noised to the level of the first row left.

  Args:
    table: the full table (`loop.make_table`).
    init_image: the image to edit, `[B, ...]`.
    strength: in (0, 1] (float or traced scalar); t0 = strength * T.
    num_train_steps: T.
    noise: standard normal noise shaped like init_image.

  Returns:
    `(table, x_start)`: rows with t >= strength * T made inactive, and q(x_{t_first} | init)
    at the first active row's alpha-bar (init_image itself if no row is left).
  """
  keep = table.t.astype(jnp.float32) < jnp.asarray(strength, jnp.float32) * num_train_steps
  active = jnp.logical_and(table.active, keep)
  first = jnp.argmax(active)
  alpha_bar = jnp.where(jnp.any(active), table.alpha_bar[first], 1.0)
  return table._replace(active=active), noise_to(init_image, alpha_bar, noise)


def broadcast_image(name: str, image, shape) -> Optional[jax.Array]:
  """`image` as f32 `shape` (a single image is repeated over the batch); a clear error if its
  shape does not fit."""
  if image is None:
    return None
  image = jnp.asarray(image)
  try:
    return jnp.broadcast_to(image, shape).astype(jnp.float32)
  except ValueError:
    raise ValueError(f"{name} of shape {image.shape} does not broadcast to the sample shape "
                     f"{tuple(shape)}") from None


def broadcast_mask(mask, shape) -> jax.Array:
  """A known-pixels mask as bool `shape`: bool as given, numbers as `> 0.5`."""
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    mask = mask > 0.5
  try:
    return jnp.broadcast_to(mask, shape)
  except ValueError:
    raise ValueError(f"mask of shape {mask.shape} does not broadcast to the sample shape "
                     f"{tuple(shape)}") from None
