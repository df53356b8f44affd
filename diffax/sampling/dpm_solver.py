"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2), on any descending table.

The probability-flow ODE of a VP process, written in the half log-SNR lambda = log(alpha/sigma)
and the data prediction x0(x_t, t), has the exact solution (DPM-Solver++ eq. 9)
  x_{t'} = (sigma'/sigma) x_t + sigma' int_lambda^lambda' e^l x0(l) dl.
Holding x0 constant over the step gives the first-order update (eq. 10)
  x_{t'} = (sigma'/sigma) x_t - alpha' (e^{-h} - 1) x0,   h = lambda' - lambda,
which is exactly DDIM with eta = 0 (Song et al. 2021 eq. 12). The 2M solver extrapolates x0
linearly in lambda from the previous step's estimate (Algorithm 2):
  D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev,   r = h_prev / h,
second order in the step size at one model call per step. Its first step has no previous
estimate and its last step lands on alpha-bar 1 (lambda' = inf, h = inf), where the update is
x0 itself; both are first order, as in the paper. A step knows it is first by a flag in the
carry, not by its index, so a table whose leading rows are skipped (SDEdit) still starts right.
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffax.sampling import loop


class State(NamedTuple):
  """The scan carry of the multistep solver."""
  x: jax.Array            # [B, ...] the current sample x_t
  x0_prev: jax.Array      # [B, ...] the data prediction made at the previous step's level
  lambda_prev: jax.Array  # f32[], the half log-SNR at which x0_prev was made
  has_prev: jax.Array     # bool[], whether x0_prev holds a real estimate


def half_log_snr(alpha_bar: jax.Array) -> jax.Array:
  """lambda = log(alpha / sigma) = (log ab - log(1 - ab)) / 2; +inf at alpha-bar 1."""
  return 0.5 * (jnp.log(alpha_bar) - jnp.log1p(-alpha_bar))


def dpmpp_2m_update(x_t: jax.Array, x0: jax.Array, x0_prev: jax.Array, alpha_bar: jax.Array,
                    alpha_bar_prev: jax.Array, lambda_prev: jax.Array,
                    second_order: jax.Array) -> jax.Array:
  """One DPM-Solver++(2M) update from alpha-bar_t to alpha-bar_{t'} (Algorithm 2, line 6-8).

  Args:
    x_t: the current sample, `[B, ...]`.
    x0: the data prediction at (x_t, t), shaped like x_t.
    x0_prev: the data prediction at the previous level lambda_prev (ignored when first order).
    alpha_bar: ab_t, a scalar.
    alpha_bar_prev: ab_{t'} > ab_t, a scalar (1 for the last step).
    lambda_prev: the half log-SNR of x0_prev.
    second_order: bool scalar; False gives the first-order (DDIM) update. Forced False when
      ab_{t'} = 1, where h is infinite and the update is x0.

  Returns:
    x_{t'}, shaped like x_t.
  """
  lam, lam_next = half_log_snr(alpha_bar), half_log_snr(alpha_bar_prev)
  h = lam_next - lam
  # 1/(2r) = h / (2 h_prev); unused (and possibly inf) when first order.
  second_order = jnp.logical_and(second_order, alpha_bar_prev < 1.0)
  c = jnp.where(second_order, h / (2.0 * (lam - lambda_prev)), 0.0)
  d = x0 + c * (x0 - x0_prev)
  sigma_ratio = jnp.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar))
  return sigma_ratio * x_t - jnp.sqrt(alpha_bar_prev) * jnp.expm1(-h) * d


def sampler(model_fn: Callable, *, eta=None, prediction: str = "eps", clip_x0: bool = False,
            threshold=None, order: int = 2) -> loop.Sampler:
  """DPM-Solver++ for `loop.run`: order 2 is the 2M solver, order 1 its first-order (DDIM)
  update. One model call per step; `eta` is accepted and ignored (the solver is deterministic).
  Thresholding and clip_x0 act on the data prediction, as in the paper (sec. 4)."""
  del eta
  if order not in (1, 2):
    raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order!r}")

  def init(x):
    return State(x=x, x0_prev=jnp.zeros_like(x), lambda_prev=jnp.zeros((), jnp.float32),
                 has_prev=jnp.zeros((), bool))

  def step(state: State, inputs: loop.StepInput) -> State:
    x = state.x
    output = loop.call_model(model_fn, x, inputs.t)
    x0, _ = loop.denoise(output, x, inputs.alpha_bar, prediction=prediction, clip_x0=clip_x0,
                           threshold=threshold)
    second = jnp.logical_and(state.has_prev, order == 2)
    x_next = dpmpp_2m_update(x, x0, state.x0_prev, inputs.alpha_bar, inputs.alpha_bar_prev,
                             state.lambda_prev, second)
    return State(x=x_next, x0_prev=x0, lambda_prev=half_log_snr(inputs.alpha_bar),
                 has_prev=jnp.ones((), bool))

  return loop.Sampler(step, init=init, final=lambda state: state.x,
                        with_x=lambda state, x: state._replace(x=x),
                        restart=lambda state: state._replace(has_prev=jnp.zeros((), bool)))


dpmpp_2m = functools.partial(sampler, order=2)
