"""DDIM sampling (Song et al. 2021, eq. 12), on any descending timestep table.

From the model's (x0, eps) estimates at alpha-bar_t, the step to alpha-bar_{t'} is
  x_{t'} = sqrt(ab_{t'}) x0 + sqrt(1 - ab_{t'} - sigma^2) eps + sigma z,
  sigma(eta) = eta sqrt((1 - ab_{t'}) / (1 - ab_t)) sqrt(1 - ab_t / ab_{t'})   (eq. 16).
eta = 0 is the deterministic DDIM; eta = 1 has the law of DDPM's ancestral step with variance
beta-tilde (between any two levels, so also on a respaced table).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffax import diffusion
from diffax.sampling import loop
from diffax.schedules import Schedule


def generalized_step(model_output: jax.Array, x_t: jax.Array, alpha_bar: jax.Array,
                     alpha_bar_prev: jax.Array, noise: jax.Array, *, eta=0.0,
                     prediction: str = "eps", clip_x0: bool = False,
                     threshold=None) -> jax.Array:
  """One step of DDIM's generalized process (Song et al. 2021, eq. 12) from ab_t to ab_{t'}.

  Args:
    model_output: the model's prediction at (x_t, t), shaped like x_t `[B, ...]`.
    x_t: the current sample.
    alpha_bar: ab_t, broadcastable to x_t.
    alpha_bar_prev: ab_{t'} >= ab_t, broadcastable to x_t (1 for the last step).
    noise: standard normal noise shaped like x_t (unused when eta == 0).
    eta: the stochasticity, a float or a traced scalar; 0 deterministic, 1 DDPM-like.
    prediction: what the model predicts: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to [-1, 1] (see `loop.denoise`).
    threshold: None, or the percentile of dynamic thresholding (see `loop.denoise`).

  Returns:
    x_{t'}, shaped like x_t.
  """
  x0, eps = loop.denoise(model_output, x_t, alpha_bar, prediction=prediction, clip_x0=clip_x0,
                           threshold=threshold)
  sigma = (eta * jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
           * jnp.sqrt(jnp.maximum(1.0 - alpha_bar / alpha_bar_prev, 0.0)))
  direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_prev - sigma**2, 0.0)) * eps
  return jnp.sqrt(alpha_bar_prev) * x0 + direction + sigma * noise


def ddim_step(s: Schedule, model_output: jax.Array, t: jax.Array, t_prev: jax.Array,
              x_t: jax.Array, noise: jax.Array, *, eta=0.0, prediction: str = "eps",
              clip_x0: bool = False) -> jax.Array:
  """One DDIM step from t to t_prev (Song et al. 2021, eq. 12).

  Args:
    s: the schedule.
    model_output: the model's prediction at (x_t, t), `[B, ...]`.
    t: timesteps, `i32[B]`.
    t_prev: the timesteps to step to, `i32[B]` (or a scalar), t_prev < t; -1 means the last
      step, to alpha-bar 1 (the x0 estimate itself when eta = 0).
    x_t: the current sample, `[B, ...]`.
    noise: standard normal noise shaped like x_t.
    eta: stochasticity in [0, 1]; 0 deterministic, 1 the DDPM posterior's law.
    prediction: "eps", "x0" or "v".
    clip_x0: clip the x0 estimate to [-1, 1].

  Returns:
    x_{t_prev}, shaped like x_t.
  """
  diffusion.check_prediction(prediction)
  ab = diffusion.extract(s.alphas_cumprod, t, x_t)
  t_prev = jnp.asarray(t_prev)
  ab_prev = jnp.where(t_prev >= 0, s.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
  ab_prev = ab_prev.reshape(ab_prev.shape + (1,) * (x_t.ndim - ab_prev.ndim))
  return generalized_step(model_output, x_t, ab, ab_prev, noise, eta=eta, prediction=prediction,
                          clip_x0=clip_x0)


def sampler(model_fn: Callable, *, eta=None, prediction: str = "eps", clip_x0: bool = False,
            threshold=None) -> loop.Sampler:
  """The DDIM sampler for `loop.run`; eta (None: 0) may be a traced scalar."""
  return loop.single_call_sampler(generalized_step, model_fn, eta=0.0 if eta is None else eta,
                                  prediction=prediction, clip_x0=clip_x0, threshold=threshold)
