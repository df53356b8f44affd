"""Timestep tables: which of the T training steps a sampler visits, in descending order.

A sampler with fewer steps than training visits a subset t_1 > t_2 > ... > t_n of [0, T) and
jumps between consecutive entries (respacing, Nichol & Dhariwal 2021 sec. 4; DDIM, Song et al.
2021 sec. 4.2). The tables are host numpy arrays: they are data, passed into the jitted sampler as
traced arguments, so a different table of the same length does not recompile.

  >>> timesteps(1000, 10)                     # linspace: T-1 .. 0, evenly spaced
  array([999, 888, 777, 666, 555, 444, 333, 222, 111,   0], dtype=int32)
  >>> timesteps(1000, 10, "trailing")
  array([999, 899, 799, 699, 599, 499, 399, 299, 199,  99], dtype=int32)
"""

import numpy as np


def linspace(num_train_steps: int, num_steps: int) -> np.ndarray:
  """Evenly spaced from T-1 down to 0, both included (rounded to the nearest integer)."""
  return np.floor(np.linspace(num_train_steps - 1, 0, num_steps) + 0.5)


def leading(num_train_steps: int, num_steps: int) -> np.ndarray:
  """Multiples of T // n starting at 0: (n-1) k, ..., k, 0 (DDIM's "uniform" skip, diffusers')."""
  return np.arange(num_steps)[::-1] * (num_train_steps // num_steps)


def trailing(num_train_steps: int, num_steps: int) -> np.ndarray:
  """Evenly spaced by T / n ending at T-1: T-1, T-1-T/n, ... (Lin et al. 2024, table 2)."""
  return np.round(num_train_steps - np.arange(num_steps) * (num_train_steps / num_steps)) - 1


def quadratic(num_train_steps: int, num_steps: int) -> np.ndarray:
  """Quadratic in the step index up to 0.8 T: DDIM's choice for CIFAR-10 (Song et al. 2021,
  appendix D.2): t_i = floor((i sqrt(0.8 T) / (n-1))^2), dense near t = 0 where detail forms.

  With many steps the reference code repeats the smallest entries (T = 1000, n = 50 gives
  0, 0, 1, ...); here each entry is raised to at least one above the previous, so the table keeps
  n distinct steps.
  """
  ascending = np.floor(np.linspace(0, np.sqrt(0.8 * num_train_steps), num_steps) ** 2)
  index = np.arange(num_steps)
  return (np.maximum.accumulate(ascending - index) + index)[::-1]


# spacing name -> table(num_train_steps, num_steps) -> float or int array, descending.
SPACINGS = {"linspace": linspace, "leading": leading, "trailing": trailing,
            "quadratic": quadratic}


def timesteps(num_train_steps: int, num_steps: int, spacing: str = "linspace") -> np.ndarray:
  """The descending timesteps a `num_steps`-step sampler visits out of `num_train_steps`.

  Args:
    num_train_steps: T, the length of the training schedule.
    num_steps: n in [1, T], the number of sampling steps.
    spacing: a key of `SPACINGS`.

  Returns:
    `i32[n]`, strictly decreasing, every entry in [0, T).

  Raises:
    ValueError: on an unknown spacing or n outside [1, T].
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
  ts = np.asarray(SPACINGS[spacing](int(num_train_steps), int(num_steps))).astype(np.int32)
  # Every spacing above is strictly decreasing within [0, T) for 1 <= n <= T.
  assert np.all(np.diff(ts) < 0) and 0 <= ts.min() and ts.max() < num_train_steps, ts
  return ts
