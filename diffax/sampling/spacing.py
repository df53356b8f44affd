"""Timestep tables: which of the T training steps a sampler visits, in descending order.

A sampler with fewer steps than training visits a subset t_1 > t_2 > ... > t_n of [0, T) and
jumps between consecutive entries (respacing, Nichol & Dhariwal 2021 sec. 4; DDIM, Song et al.
2021 sec. 4.2). The tables are host numpy arrays: they are data, passed into the jitted sampler as
traced arguments, so a different table of the same length does not recompile.

  >>> timesteps(1000, 10)                     # linspace: T-1 .. 0, evenly spaced
  array([999, 888, 777, 666, 555, 444, 333, 222, 111,   0], dtype=int32)
  >>> timesteps(1000, 10, "trailing")
  array([999, 899, 799, 699, 599, 499, 399, 299, 199,  99], dtype=int32)

Every spacing is `fn(num_train_steps, num_steps, alphas_cumprod=None)`; only "karras", which is
defined by noise levels rather than step indices, reads the schedule's alpha-bars.
"""

from typing import Optional

import numpy as np


def linspace(num_train_steps: int, num_steps: int, alphas_cumprod=None) -> np.ndarray:
  """Evenly spaced from T-1 down to 0, both included (rounded to the nearest integer)."""
  return np.floor(np.linspace(num_train_steps - 1, 0, num_steps) + 0.5)


def leading(num_train_steps: int, num_steps: int, alphas_cumprod=None) -> np.ndarray:
  """Multiples of T // n starting at 0: (n-1) k, ..., k, 0 (DDIM's "uniform" skip, diffusers')."""
  return np.arange(num_steps)[::-1] * (num_train_steps // num_steps)


def trailing(num_train_steps: int, num_steps: int, alphas_cumprod=None) -> np.ndarray:
  """Evenly spaced by T / n ending at T-1: T-1, T-1-T/n, ... (Lin et al. 2024, table 2)."""
  return np.round(num_train_steps - np.arange(num_steps) * (num_train_steps / num_steps)) - 1


def quadratic(num_train_steps: int, num_steps: int, alphas_cumprod=None) -> np.ndarray:
  """Quadratic in the step index up to 0.8 T: DDIM's choice for CIFAR-10 (Song et al. 2021,
  appendix D.2): t_i = floor((i sqrt(0.8 T) / (n-1))^2), dense near t = 0 where detail forms.

  With many steps the reference code repeats the smallest entries (T = 1000, n = 50 gives
  0, 0, 1, ...); here each entry is raised to at least one above the previous, so the table keeps
  n distinct steps.
  """
  ascending = np.floor(np.linspace(0, np.sqrt(0.8 * num_train_steps), num_steps) ** 2)
  return _distinct(ascending, num_train_steps)[::-1]


def _distinct(ascending: np.ndarray, num_train_steps: int) -> np.ndarray:
  """Raises each entry to at least one above the previous, then caps entry i of n at
  T - n + i, so n <= T sorted integers in [0, T) become strictly increasing within [0, T)."""
  n = len(ascending)
  index = np.arange(n)
  raised = np.maximum.accumulate(ascending - index) + index
  return np.minimum(raised, num_train_steps - n + index)


def edm_sigmas(alphas_cumprod) -> np.ndarray:
  """EDM's noise level of each training step, sigma_t = sqrt((1 - ab_t) / ab_t) (Karras et al.
  2022, table 1: the VP process x_t = alpha_t (x0 + sigma_t eps) with alpha_t = sqrt(ab_t)),
  float64 `[T]`, increasing in t."""
  ab = np.asarray(alphas_cumprod, np.float64)
  return np.sqrt((1.0 - ab) / ab)


def karras_sigmas(sigma_min: float, sigma_max: float, num_steps: int,
                  rho: float = 7.0) -> np.ndarray:
  """Karras et al. 2022 eq. 5: sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho,
  i = 0..n-1, from sigma_max down to sigma_min (sigma_N = 0 is the sampler's last target)."""
  if num_steps == 1:
    return np.array([sigma_max], np.float64)
  ramp = np.linspace(0.0, 1.0, num_steps)
  inv_max, inv_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return (inv_max + ramp * (inv_min - inv_max)) ** rho


def sigma_to_timestep(sigmas, alphas_cumprod) -> np.ndarray:
  """The fractional training timestep of each EDM noise level: log sigma interpolated linearly
  over the table of log sigma_t, t = 0..T-1 (as k-diffusion's `DiscreteSchedule.sigma_to_t`),
  clamped to [0, T-1]. Round it for a model trained on integer timesteps."""
  log_table = np.log(edm_sigmas(alphas_cumprod))
  return np.interp(np.log(np.asarray(sigmas, np.float64)), log_table,
                   np.arange(len(log_table), dtype=np.float64))


# EDM's largest noise level (Karras et al. 2022, table 1: sigma_max = 80 for every model).
KARRAS_SIGMA_MAX = 80.0


def karras(num_train_steps: int, num_steps: int, alphas_cumprod=None,
           rho: float = 7.0) -> np.ndarray:
  """Karras et al. 2022 (eq. 5, rho = 7) sigma spacing, mapped to the trained timesteps.

  The n levels run from sigma_max = min(sigma_{T-1}, 80) down to the schedule's smallest level
  sigma_0, evenly spaced in sigma^(1/rho), so dense at low noise. EDM's cap of 80 matters for
  the cosine schedule, whose clipped last betas put sigma_{T-1} near 2e4: uncapped, half the
  steps would sit above sigma = 80 where nothing changes. Each level is mapped to the nearest
  training timestep by interpolating log sigma over the discrete table (`sigma_to_timestep`) and
  rounding, so samplers step between *trained* levels and the model is always queried at a noise
  level it was trained on. Where rounding would repeat a timestep (many steps, small T),
  entries are nudged apart to keep n distinct steps.

  Needs `alphas_cumprod`: the spacing is defined by the schedule's noise levels.
  """
  if alphas_cumprod is None:
    raise ValueError("the karras spacing needs the schedule's alphas_cumprod")
  sigma = edm_sigmas(alphas_cumprod)
  if len(sigma) != num_train_steps:
    raise ValueError(f"alphas_cumprod has {len(sigma)} entries, expected {num_train_steps}")
  sigma_max = min(sigma[-1], max(KARRAS_SIGMA_MAX, sigma[0]))
  levels = karras_sigmas(sigma[0], sigma_max, num_steps, rho)
  t = np.round(sigma_to_timestep(levels, alphas_cumprod))
  return _distinct(t[::-1], num_train_steps)[::-1]


# spacing name -> table(num_train_steps, num_steps, alphas_cumprod=None), descending.
SPACINGS = {"linspace": linspace, "leading": leading, "trailing": trailing,
            "quadratic": quadratic, "karras": karras}


def timesteps(num_train_steps: int, num_steps: int, spacing: str = "linspace", *,
              alphas_cumprod: Optional[np.ndarray] = None) -> np.ndarray:
  """The descending timesteps a `num_steps`-step sampler visits out of `num_train_steps`.

  Args:
    num_train_steps: T, the length of the training schedule.
    num_steps: n in [1, T], the number of sampling steps.
    spacing: a key of `SPACINGS`.
    alphas_cumprod: the schedule's alpha-bars `[T]` (host values); needed by "karras" only.

  Returns:
    `i32[n]`, strictly decreasing, every entry in [0, T).

  Raises:
    ValueError: on an unknown spacing, n outside [1, T], or "karras" without alphas_cumprod.
  """
  if spacing not in SPACINGS:
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {sorted(SPACINGS)}")
  for name, value in (("num_train_steps", num_train_steps), ("num_steps", num_steps)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name} must be an int, got {value!r}")
  if num_train_steps < 1:
    raise ValueError(f"num_train_steps must be >= 1, got {num_train_steps}")
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f"num_steps must lie in [1, {num_train_steps}], got {num_steps}")
  ts = np.asarray(SPACINGS[spacing](int(num_train_steps), int(num_steps),
                                    alphas_cumprod=alphas_cumprod)).astype(np.int32)
  # Every spacing above is strictly decreasing within [0, T) for 1 <= n <= T.
  assert np.all(np.diff(ts) < 0) and 0 <= ts.min() and ts.max() < num_train_steps, ts
  return ts
