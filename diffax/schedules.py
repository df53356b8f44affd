"""Noise schedules as data.

A `Schedule` holds the discrete-time variance schedule beta_1..beta_T of DDPM (Ho et al. 2020)
and every array derived from it that the forward process, the losses and the samplers read.
Index `t` runs over `[0, T)` with `t = 0` the least noisy step (the paper's t = 1).

Everything is computed in float64 on the host and stored as float32: near t = 0, `1 - alpha_bar`
is about 1e-4, and computing it in float32 from `alpha_bar` would keep only a few of its digits.

A `Schedule` is a pytree (its arrays are leaves), so it can be passed into and out of `jax.jit`.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
  """A discrete variance schedule and its derived arrays, each `f32[T]`.

  Attributes:
    betas: beta_t, the variance added at step t.
    alphas_cumprod: alpha_bar_t = prod_{s<=t} (1 - beta_s).
    alphas_cumprod_prev: alpha_bar_{t-1}, with alpha_bar_{-1} = 1.
    sqrt_alphas_cumprod: sqrt(alpha_bar_t), the signal scale of q(x_t | x_0).
    sqrt_one_minus_alphas_cumprod: sqrt(1 - alpha_bar_t), the noise scale of q(x_t | x_0).
    log_snr: log(alpha_bar_t / (1 - alpha_bar_t)), decreasing in t.
    posterior_variance: beta-tilde_t = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) (DDPM eq. 7).
    posterior_log_variance_clipped: log beta-tilde_t, with the t = 0 entry (where beta-tilde is 0)
      replaced by the t = 1 entry, as in the DDPM reference code.
    posterior_mean_coef1: coefficient of x_0 in the posterior mean (DDPM eq. 7).
    posterior_mean_coef2: coefficient of x_t in the posterior mean (DDPM eq. 7).
  """

  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  log_snr: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_steps(self) -> int:
    """The number of diffusion steps T."""
    return self.betas.shape[0]


def from_betas(betas) -> Schedule:
  """Builds a `Schedule` from betas, deriving every other array in float64.

  Args:
    betas: `[T]` array-like of variances in (0, 1).

  Returns:
    The schedule, with float32 arrays.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
  if not np.all((betas > 0) & (betas <= 1)):
    raise ValueError(f"betas must lie in (0, 1], got min {betas.min()} and max {betas.max()}")
  alphas = 1.0 - betas
  ab = np.cumprod(alphas)
  ab_prev = np.concatenate([[1.0], ab[:-1]])
  one_minus_ab = -np.expm1(np.cumsum(np.log1p(-betas)))  # 1 - alpha_bar without cancellation
  post_var = betas * (1.0 - ab_prev) / one_minus_ab
  post_log_var = np.log(np.concatenate([post_var[1:2], post_var[1:]]) if betas.size > 1
                        else np.maximum(post_var, 1e-20))
  f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)
  return Schedule(
      betas=f32(betas),
      alphas_cumprod=f32(ab),
      alphas_cumprod_prev=f32(ab_prev),
      sqrt_alphas_cumprod=f32(np.sqrt(ab)),
      sqrt_one_minus_alphas_cumprod=f32(np.sqrt(one_minus_ab)),
      log_snr=f32(np.log(ab) - np.log(one_minus_ab)),
      posterior_variance=f32(post_var),
      posterior_log_variance_clipped=f32(post_log_var),
      posterior_mean_coef1=f32(betas * np.sqrt(ab_prev) / one_minus_ab),
      posterior_mean_coef2=f32((1.0 - ab_prev) * np.sqrt(alphas) / one_minus_ab),
  )


def linear(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
  """The linear schedule of DDPM (Ho et al. 2020, sec. 4): betas evenly spaced in [start, end].

  The endpoints are those of T = 1000; for other T they are used as given.

  Example:
    >>> s = diffax.schedules.linear(1000)
    >>> s.alphas_cumprod[-1]  # about 4e-5: x_T is nearly pure noise
  """
  _check_num_steps(num_steps)
  if not 0 < beta_start <= beta_end < 1:
    raise ValueError(
        f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
  return from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def cosine(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
  """The cosine schedule of Nichol & Dhariwal 2021 (eq. 17).

  alpha_bar(t) = f(t) / f(0) with f(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), and
  beta_t = 1 - alpha_bar(t) / alpha_bar(t-1) clipped at `max_beta` to avoid the singularity at t = T.
  """
  _check_num_steps(num_steps)
  if s < 0:
    raise ValueError(f"cosine offset s must be >= 0, got {s}")
  if not 0 < max_beta <= 1:
    raise ValueError(f"max_beta must lie in (0, 1], got {max_beta}")
  f = lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
  u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  ab = f(u) / f(0.0)
  betas = np.clip(1.0 - ab[1:] / ab[:-1], 0.0, max_beta)
  return from_betas(betas)


def scaled_linear(num_steps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012) -> Schedule:
  """Latent diffusion's schedule (Rombach et al. 2022; diffusers' "scaled_linear", Stable
  Diffusion's): sqrt(beta) evenly spaced in [sqrt(start), sqrt(end)]."""
  _check_num_steps(num_steps)
  if not 0 < beta_start <= beta_end < 1:
    raise ValueError(
        f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
  return from_betas(np.linspace(beta_start**0.5, beta_end**0.5, num_steps,
                                dtype=np.float64) ** 2)


SCHEDULES = {"linear": linear, "cosine": cosine, "scaled_linear": scaled_linear}


def _check_num_steps(num_steps):
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
