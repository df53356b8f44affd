"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any descending timestep table.

Each step samples the posterior q(x_{t'} | x_t, x0) of DDPM eq. 6-7 at the model's x0 estimate.
Written in alpha-bars it works between any two noise levels: jumping from alpha-bar_t to
alpha-bar_{t'} (t' < t) is one DDPM step of the respaced process with
beta' = 1 - alpha-bar_t / alpha-bar_{t'} (Nichol & Dhariwal 2021, sec. 4), so the same step runs
the full chain and every subset of it.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffax import diffusion
from diffax.sampling import loop
from diffax.schedules import Schedule


def ancestral_step(model_output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array,
                   alpha_bar_prev: jax.Array, noise: jax.Array, *, prediction: str = "eps",
                   clip_x0: bool = False, threshold=None) -> jax.Array:
  """One draw from p(x_{t'} | x_t) = q(x_{t'} | x_t, x0_hat) (DDPM eq. 6-7, respaced).

  With beta' = 1 - ab_t / ab_{t'}:
    mean = sqrt(ab_{t'}) beta' / (1 - ab_t) x0_hat + sqrt(1 - beta') (1 - ab_{t'}) / (1 - ab_t) x_t
    var  = beta-tilde' = beta' (1 - ab_{t'}) / (1 - ab_t),
  which is 0 when ab_{t'} = 1 (the last step returns x0_hat without noise).

  Args:
    model_output: the model's prediction at (x_t, t), shaped like x_t `[B, ...]`.
    x_t: the current sample.
    alpha_bar: ab_t, broadcastable to x_t.
    alpha_bar_prev: ab_{t'} >= ab_t, broadcastable to x_t.
    noise: standard normal noise shaped like x_t.
    prediction: what the model predicts: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to [-1, 1] (see `loop.denoise`).
    threshold: None, or the percentile of dynamic thresholding (see `loop.denoise`).

  Returns:
    x_{t'}, shaped like x_t.
  """
  x0, _ = loop.denoise(model_output, x_t, alpha_bar, prediction=prediction, clip_x0=clip_x0,
                         threshold=threshold)
  one_minus_ab = 1.0 - alpha_bar
  beta = 1.0 - alpha_bar / alpha_bar_prev
  mean = (jnp.sqrt(alpha_bar_prev) * beta / one_minus_ab * x0
          + jnp.sqrt(1.0 - beta) * (1.0 - alpha_bar_prev) / one_minus_ab * x_t)
  var = beta * (1.0 - alpha_bar_prev) / one_minus_ab
  return mean + jnp.sqrt(jnp.maximum(var, 0.0)) * noise


def ddpm_step(s: Schedule, model_output: jax.Array, t: jax.Array, x_t: jax.Array,
              noise: jax.Array, *, prediction: str = "eps", clip_x0: bool = False) -> jax.Array:
  """One step of DDPM ancestral sampling from t to t - 1 (Ho et al. 2020, Algorithm 2).

  Uses the posterior variance beta-tilde_t; at t == 0 it returns the x0 estimate, no noise added.

  Args:
    s: the schedule.
    model_output: the model's prediction at (x_t, t), `[B, ...]`.
    t: timesteps, `i32[B]`.
    x_t: the current sample, `[B, ...]`.
    noise: standard normal noise shaped like x_t.
    prediction: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to [-1, 1].

  Returns:
    x_{t-1}, shaped like x_t.
  """
  diffusion.check_prediction(prediction)
  ab = diffusion.extract(s.alphas_cumprod, t, x_t)
  ab_prev = diffusion.extract(s.alphas_cumprod_prev, t, x_t)
  return ancestral_step(model_output, x_t, ab, ab_prev, noise, prediction=prediction,
                        clip_x0=clip_x0)


def sampler(model_fn: Callable, *, eta=None, prediction: str = "eps", clip_x0: bool = False,
            threshold=None) -> loop.Sampler:
  """The DDPM ancestral sampler for `loop.run`. `eta` is accepted and ignored (DDPM is DDIM's
  eta = 1 law already)."""
  del eta
  return loop.single_call_sampler(ancestral_step, model_fn, prediction=prediction,
                                  clip_x0=clip_x0, threshold=threshold)
