"""EDM's deterministic 2nd-order Heun sampler (Karras et al. 2022, Algorithm 1, S_churn = 0).

EDM writes the VP process as x_t = alpha_t (x_edm), x_edm = x0 + sigma_t eps with
sigma_t = sqrt((1 - ab_t) / ab_t) (table 1), where the probability-flow ODE is
  dx_edm / dsigma = (x_edm - D(x_edm; sigma)) / sigma = eps_hat   (eq. 3 with sigma(t) = t).
Algorithm 1 takes an Euler step of this ODE from sigma_i to sigma_{i+1} and corrects it with the
slope at the end point (the trapezoidal rule), except on the last step to sigma = 0, which stays
Euler (and lands on D, the x0 estimate). The carry is the VP-scaled x_t; each step converts to
x_edm = x_t / alpha and back. The Euler predictor alone is DDIM (eta = 0).

The model is queried at the table's levels: at t for the slope and at t_prev for the
correction, so it needs 2 calls per step (2n - 1 for n steps). With the "karras" spacing those
levels are EDM's rho = 7 sigmas, each rounded to the nearest trained timestep (see
`spacing.karras`): the step uses that timestep's own sigma, so the model and the ODE agree.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from diffax.sampling import loop


def sampler(model_fn: Callable, *, eta=None, prediction: str = "eps", clip_x0: bool = False,
            threshold=None) -> loop.Sampler:
  """The Heun sampler for `loop.run`; `eta` is accepted and ignored (S_churn = 0)."""
  del eta

  def slope(x, t, alpha_bar):
    output = loop.call_model(model_fn, x, t)
    _, eps = loop.denoise(output, x, alpha_bar, prediction=prediction, clip_x0=clip_x0,
                            threshold=threshold)
    return eps  # (x_edm - D) / sigma

  def step(x, inputs: loop.StepInput):
    ab, ab_next = inputs.alpha_bar, inputs.alpha_bar_prev
    sigma, sigma_next = loop.edm_sigma(ab), loop.edm_sigma(ab_next)
    x_edm = x / jnp.sqrt(ab)
    d = slope(x, inputs.t, ab)
    x_euler = x_edm + (sigma_next - sigma) * d

    def heun(_):
      d_next = slope(jnp.sqrt(ab_next) * x_euler, inputs.t_prev, ab_next)
      return x_edm + (sigma_next - sigma) * 0.5 * (d + d_next)

    x_edm_next = jax.lax.cond(inputs.t_prev >= 0, heun, lambda _: x_euler, None)
    return jnp.sqrt(ab_next) * x_edm_next

  return loop.Sampler(step)
