"""Bits per dimension: the variational bound of a DDPM on the likelihood of 8-bit data.

Ho et al. 2020, eq. 5: for data x_0 on the 256 levels of [-1, 1] (x = k / 127.5 - 1),

  -log p(x_0) <= L_T + sum_{t=2}^{T} L_{t-1} + L_0,
  L_T     = KL(q(x_T | x_0) || N(0, I))                            the prior
  L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))          one per reverse step
  L_0     = -log p(x_0 | x_1)                                      the decoder

with p(x_{t-1} | x_t) = N(mu(x_t, t), sigma_t^2 I), mu the posterior mean (DDPM eq. 7) at the
model's estimate of x_0, and the decoder the discretized Gaussian of DDPM eq. 13: each pixel's
probability is the Gaussian mass of its bin [x - 1/255, x + 1/255] (the outermost bins reach
-inf and +inf). Each L_{t-1} is estimated at one draw x_t ~ q(x_t | x_0), as in DDPM's
`calc_bpd_loop`; the sum runs over all T steps (T model evaluations per image). Bits per
dimension are the total in nats over D ln 2, D = pixels x channels.

Indices here are the schedule's 0-based ones: index t is the paper's t + 1, so the reverse steps
are t = 1 .. T-1 and the decoder reads the model at t = 0.

The reverse variance is fixed, as in DDPM: "large" is sigma_t^2 = beta_t (DDPM's `fixedlarge`,
with beta-tilde_1 at t = 0) and "small" is the posterior variance beta-tilde_t (`fixedsmall`,
what the ddpm sampler uses). On data whose bound has a closed form (a Gaussian law, its exact
denoiser, cosine schedule, T = 1000), "large" is 0.09 bits/dim above the true NLL and "small"
0.66, so "large" is the default.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.scipy import special

from diffax import diffusion
from diffax.schedules import Schedule

VARIANCES = ("large", "small")
NUM_LEVELS = 256  # 8-bit data
BIN_HALF_WIDTH = 1.0 / (NUM_LEVELS - 1)  # [-1, 1] in 255 steps of 2/255


def normal_kl(mean1, log_var1, mean2, log_var2):
  """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)), elementwise."""
  return 0.5 * (log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + (mean1 - mean2) ** 2 * jnp.exp(-log_var2) - 1.0)


def _log_diff_ndtr(lower, upper):
  """log(Phi(upper) - Phi(lower)) for lower < upper, accurate in both tails: above 0 it uses
  Phi(-lower) - Phi(-upper)."""
  flip = lower > 0
  a = jnp.where(flip, -upper, lower)
  b = jnp.where(flip, -lower, upper)
  log_b, log_a = special.log_ndtr(b), special.log_ndtr(a)
  return log_b + jnp.log1p(-jnp.exp(jnp.minimum(log_a - log_b, 0.0)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """log P(x) of 8-bit data under a Gaussian discretized to the 256 bins of [-1, 1]
  (DDPM eq. 13), elementwise.

  Args:
    x: data on the levels k / 127.5 - 1, k = 0 .. 255.
    mean: the Gaussian's mean, broadcastable to x.
    log_scale: the log of its standard deviation, broadcastable to x.

  Returns:
    The log-probability of each element's bin, shaped like x.
  """
  inv_scale = jnp.exp(-log_scale)
  lower = (x - BIN_HALF_WIDTH - mean) * inv_scale
  upper = (x + BIN_HALF_WIDTH - mean) * inv_scale
  edge = 1.0 - BIN_HALF_WIDTH  # the first and last bins are open
  lowest = special.log_ndtr(upper)
  highest = special.log_ndtr(-lower)
  middle = _log_diff_ndtr(lower, jnp.maximum(upper, lower + 1e-12))
  return jnp.where(x < -edge, lowest, jnp.where(x > edge, highest, middle))


def reverse_log_variance(schedule: Schedule, variance: str = "large") -> jax.Array:
  """`f32[T]`: log sigma_t^2 of p(x_{t-1} | x_t) at each index: "large" is beta_t, "small" the
  posterior variance beta-tilde_t; at index 0 (the decoder, where beta-tilde is 0) both take
  beta-tilde of index 1, as DDPM's code does."""
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {list(VARIANCES)}")
  clipped = schedule.posterior_log_variance_clipped
  if variance == "small":
    return clipped
  return jnp.concatenate([clipped[:1], jnp.log(schedule.betas[1:])])


def vlb_terms(model_fn: Callable, schedule: Schedule, x0: jax.Array, rng: jax.Array, *,
              ids: Optional[jax.Array] = None, prediction: str = "eps",
              variance: str = "large", clip_x0: bool = True) -> dict:
  """The terms of the variational bound of each example, in nats, over all T steps.

  Jittable; runs the T model evaluations in one `lax.scan`.

  Args:
    model_fn: `model_fn(x_t, t) -> output`, t `i32[B]` (close over params and condition).
    schedule: the training schedule.
    x0: `[B, ...]` data on the 256 levels of [-1, 1].
    rng: a PRNG key. Example b draws the noise of step t from `fold_in(fold_in(rng,
      ids[b]), t)`, so its terms do not depend on the batch it is in.
    ids: `i32[B]`, each example's index in the whole evaluation (default 0 .. B-1).
    prediction: what the model predicts: "eps", "x0" or "v".
    variance: the fixed reverse variance, "large" or "small" (module docstring).
    clip_x0: clip the model's x0 estimate to [-1, 1] (DDPM's evaluation does).

  Returns:
    `{"prior": [B], "diffusion": [B], "decoder": [B], "total": [B]}` in nats: L_T, the sum of
    the T - 1 reverse-step KLs, L_0 and their sum.
  """
  diffusion.check_prediction(prediction)
  log_var = reverse_log_variance(schedule, variance)
  batch = x0.shape[0]
  ids = jnp.arange(batch, dtype=jnp.int32) if ids is None else jnp.asarray(ids, jnp.int32)
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, ids)  # [B]
  axes = tuple(range(1, x0.ndim))
  num_steps = schedule.num_steps

  def model_mean(t, noise):
    """x_t ~ q(x_t | x0) at index t, and the mean of p(x_{t-1} | x_t)."""
    tt = jnp.full((batch,), t, jnp.int32)
    x_t = diffusion.q_sample(schedule, x0, tt, noise)
    alpha, sigma = diffusion.alpha_sigma(schedule, tt, x_t)
    x0_hat, _ = diffusion.x0_eps_from_output(model_fn(x_t, tt).astype(x0.dtype), x_t, alpha,
                                             sigma, prediction)
    if clip_x0:
      x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    mean, _, _ = diffusion.q_posterior(schedule, x0_hat, x_t, tt)
    return x_t, tt, mean

  def noise_at(t):
    keys_t = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t)
    return jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys_t)

  def step(total, t):
    x_t, tt, mean = model_mean(t, noise_at(t))
    true_mean, _, true_log_var = diffusion.q_posterior(schedule, x0, x_t, tt)
    kl = normal_kl(true_mean, true_log_var, mean, log_var[t])
    return total + kl.sum(axis=axes), None

  kls, _ = jax.lax.scan(step, jnp.zeros((batch,), jnp.float32), jnp.arange(1, num_steps))
  _, _, mean = model_mean(0, noise_at(0))
  decoder = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var[0]).sum(axis=axes)
  ab_last = schedule.alphas_cumprod[-1]
  prior = normal_kl(jnp.sqrt(ab_last) * x0, jnp.log1p(-ab_last), 0.0, 0.0).sum(axis=axes)
  return {"prior": prior, "diffusion": kls, "decoder": decoder,
          "total": prior + kls + decoder}


def bits_per_dim(nats: jax.Array, num_dims: int) -> jax.Array:
  """Nats per example -> bits per dimension: nats / (D ln 2)."""
  return nats / (num_dims * jnp.log(2.0))
