"""Euler ancestral sampling, as in k-diffusion's `sample_euler_ancestral` (Crowson 2022).

In EDM's coordinates (x_t = alpha_t x_edm, sigma = sqrt((1 - ab) / ab), see `heun`), a step
from sigma to sigma' splits sigma'^2 = sigma_down^2 + sigma_up^2 with
  sigma_up = min(sigma', eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
takes a deterministic Euler step of the probability-flow ODE down to sigma_down and adds fresh
noise of std sigma_up:
  x_edm' = x_edm + (sigma_down - sigma) eps_hat + sigma_up z.
eta = 1 is the ancestral sampler, eta = 0 the plain Euler method. The last step, to
sigma' = 0, adds no noise and returns the x0 estimate.

For any predictor this step *is* DDIM's with the same eta (Song et al. 2021 eq. 12): with
1/ab = 1 + sigma^2, DDIM's noise std divided by alpha' is sigma_up, and
x_edm + (sigma_down - sigma) eps = x0 + sigma_down eps is DDIM's mean divided by alpha'. So eta = 1
has DDPM's posterior law (`ddpm`), and eta = 0 is DDIM; the two code paths differ only in
rounding (the tests check the identity). It is kept as its own sampler for users coming from
k-diffusion and for its sigma-space parameterization.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffax.sampling import loop

DEFAULT_ETA = 1.0


def ancestral_sigmas(sigma: jax.Array, sigma_next: jax.Array, eta) -> tuple[jax.Array, jax.Array]:
  """k-diffusion's `get_ancestral_step`: (sigma_down, sigma_up) with
  sigma_down^2 + sigma_up^2 = sigma_next^2."""
  up = jnp.minimum(sigma_next, eta * jnp.sqrt(
      jnp.maximum(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2, 0.0)))
  down = jnp.sqrt(jnp.maximum(sigma_next**2 - up**2, 0.0))
  return down, up


def euler_ancestral_step(model_output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array,
                         alpha_bar_prev: jax.Array, noise: jax.Array, *, eta=DEFAULT_ETA,
                         prediction: str = "eps", clip_x0: bool = False,
                         threshold=None) -> jax.Array:
  """One Euler ancestral step from ab_t to ab_{t'} (VP-scaled x in and out).

  Args:
    model_output: the model's prediction at (x_t, t), shaped like x_t `[B, ...]`.
    x_t: the current sample.
    alpha_bar: ab_t, broadcastable to x_t.
    alpha_bar_prev: ab_{t'} >= ab_t, broadcastable to x_t (1 for the last step).
    noise: standard normal noise shaped like x_t.
    eta: the ancestral noise scale, a float or a traced scalar (1: ancestral, 0: Euler).
    prediction: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to [-1, 1] (see `loop.denoise`).
    threshold: None, or the percentile of dynamic thresholding (see `loop.denoise`).

  Returns:
    x_{t'}, shaped like x_t.
  """
  _, eps = loop.denoise(model_output, x_t, alpha_bar, prediction=prediction, clip_x0=clip_x0,
                          threshold=threshold)
  sigma, sigma_next = loop.edm_sigma(alpha_bar), loop.edm_sigma(alpha_bar_prev)
  down, up = ancestral_sigmas(sigma, sigma_next, eta)
  x_edm = x_t / jnp.sqrt(alpha_bar) + (down - sigma) * eps + up * noise
  return jnp.sqrt(alpha_bar_prev) * x_edm


def sampler(model_fn: Callable, *, eta=None, prediction: str = "eps", clip_x0: bool = False,
            threshold=None) -> loop.Sampler:
  """The Euler ancestral sampler for `loop.run`; eta (None: 1) may be a traced scalar."""
  return loop.single_call_sampler(euler_ancestral_step, model_fn,
                                  eta=DEFAULT_ETA if eta is None else eta,
                                  prediction=prediction, clip_x0=clip_x0, threshold=threshold)
