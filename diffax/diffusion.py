"""The forward process q(x_t | x_0), its posterior, and the eps / x0 / v parameterizations.

Notation follows Kingma et al. 2021 (VDM): x_t = alpha_t x_0 + sigma_t eps with
alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t) (a variance-preserving process).
Functions taking a `Schedule` and an integer `t: i32[B]` look the coefficients up and broadcast
them over the trailing axes of `x`; the `*_from_*` functions take `alpha, sigma` directly so that
samplers working on continuous or respaced times can use them too.
"""

import jax
import jax.numpy as jnp

from diffax.schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")


def extract(a: jax.Array, t: jax.Array, x: jax.Array) -> jax.Array:
  """a[t] reshaped to broadcast against x: `[T]`, `[B]`, `[B, ...]` -> `[B, 1, ..., 1]`."""
  out = jnp.take(a, t)
  return out.reshape(out.shape + (1,) * (x.ndim - out.ndim))


def alpha_sigma(s: Schedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t), broadcast against x."""
  return extract(s.sqrt_alphas_cumprod, t, x), extract(s.sqrt_one_minus_alphas_cumprod, t, x)


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Samples q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I) (DDPM eq. 4).

  Args:
    s: the schedule.
    x0: clean data, `[B, ...]`.
    t: timesteps, `i32[B]`.
    noise: standard normal noise shaped like x0.

  Returns:
    x_t, shaped like x0.
  """
  alpha, sigma = alpha_sigma(s, t, x0)
  return alpha * x0 + sigma * noise


def q_posterior(s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """The posterior q(x_{t-1} | x_t, x_0) = N(mean, var) of DDPM eq. 6-7.

  mean = (beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)) x_0
         + ((1 - alpha_bar_{t-1}) sqrt(alpha_t) / (1 - alpha_bar_t)) x_t,
  var  = beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t).

  Returns:
    `(mean, var, log_var)`: mean shaped like x_t; var and log_var broadcastable to it. log_var is
    clipped at t = 0, where var is 0 (see `Schedule.posterior_log_variance_clipped`).
  """
  mean = (extract(s.posterior_mean_coef1, t, x_t) * x0
          + extract(s.posterior_mean_coef2, t, x_t) * x_t)
  var = extract(s.posterior_variance, t, x_t)
  log_var = extract(s.posterior_log_variance_clipped, t, x_t)
  return mean, var, log_var


# Conversions between parameterizations (Salimans & Ho 2022, sec. 4 and appendix D), for a
# variance-preserving process with alpha^2 + sigma^2 = 1. v = alpha eps - sigma x0.

def x0_from_eps(x_t, eps, alpha, sigma):
  return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t, x0, alpha, sigma):
  return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0, eps, alpha, sigma):
  return alpha * eps - sigma * x0


def x0_from_v(x_t, v, alpha, sigma):
  return alpha * x_t - sigma * v


def eps_from_v(x_t, v, alpha, sigma):
  return sigma * x_t + alpha * v


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}")


def x0_eps_from_output(output, x_t, alpha, sigma, prediction: str = "eps"):
  """Turns a model output of the given parameterization into (x0, eps) estimates.

  Args:
    output: the model's prediction, shaped like x_t.
    x_t: the noisy input.
    alpha, sigma: signal and noise scales of x_t, broadcastable to it.
    prediction: what the model predicts: "eps", "x0" or "v".

  Returns:
    `(x0, eps)`, each shaped like x_t, consistent: x_t = alpha x0 + sigma eps.
  """
  check_prediction(prediction)
  if prediction == "eps":
    return x0_from_eps(x_t, output, alpha, sigma), output
  if prediction == "x0":
    return output, eps_from_x0(x_t, output, alpha, sigma)
  return x0_from_v(x_t, output, alpha, sigma), eps_from_v(x_t, output, alpha, sigma)


def target(x0, eps, alpha, sigma, prediction: str = "eps"):
  """The regression target of the given parameterization for the pair (x0, eps)."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x0":
    return x0
  return v_from_x0_eps(x0, eps, alpha, sigma)
