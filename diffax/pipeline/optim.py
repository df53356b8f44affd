"""The optimizer: AdamW with DDPM's learning-rate warmup and global-norm gradient clipping.

DDPM (Ho et al. 2020, appendix B) trains with Adam, a learning rate warmed up linearly over
the first steps and then held constant, and gradients clipped to global norm 1. Here the
learning rate at optimizer step k (0-based) is, as in DDPM's reference code,

  lr(k) = learning_rate * min(k / warmup_steps, 1),

so the first update has learning rate 0 (it still fills Adam's moment estimates).
"""

from typing import Callable

import optax


def learning_rate_schedule(learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate` over `warmup_steps` steps, then constant.

  Args:
    learning_rate: the peak (and final) learning rate.
    warmup_steps: the length of the warmup; 0 means the constant rate from the first step.

  Returns:
    `schedule(step) -> learning rate`, jittable.
  """
  if learning_rate < 0:
    raise ValueError(f"config.optim.learning_rate must be >= 0, got {learning_rate}")
  if warmup_steps < 0:
    raise ValueError(f"config.optim.warmup_steps must be >= 0, got {warmup_steps}")
  if warmup_steps == 0:
    # optax.linear_schedule with 0 transition steps would hold its *initial* value (0) forever.
    return optax.constant_schedule(learning_rate)
  return optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)


def create_optimizer(config) -> tuple[optax.GradientTransformation, Callable]:
  """Builds the optimizer from `config.optim`.

  The chain is: clip the raw gradients to global norm `grad_clip_norm` (Pascanu et al. 2013),
  then AdamW (Loshchilov & Hutter 2019) with the warmup schedule. Clipping comes first so that
  it bounds the gradient Adam sees, not Adam's already normalized step.

  Args:
    config: the run config; reads `config.optim.{learning_rate, warmup_steps, b1, b2, eps,
      weight_decay, grad_clip_norm}`. `grad_clip_norm` 0 disables clipping.

  Returns:
    `(tx, lr_schedule)`: the optax transformation and `lr_schedule(step) -> learning rate`,
    the schedule it follows (for logging).
  """
  cfg = config.optim
  if cfg.grad_clip_norm < 0:
    raise ValueError(
        f"config.optim.grad_clip_norm must be >= 0 (0 disables clipping), got {cfg.grad_clip_norm}")
  lr_schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps)
  adamw = optax.adamw(
      learning_rate=lr_schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
      weight_decay=cfg.weight_decay)
  if cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), adamw)
  else:
    tx = adamw
  return tx, lr_schedule
