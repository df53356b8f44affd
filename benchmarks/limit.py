"""The hardware limit: FLOPs from XLA's cost analysis and the machine's measured matmul rate.

A figure's fraction of the limit is (FLOPs it does per second) / (FLOP/s of a large fp32 matmul
on the same cores, measured in the same run). Convolutions and matmuls are what a U-Net spends
its FLOPs on, so a large matmul is the best rate those could reach.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np


def flops(compiled) -> float:
  """FLOPs of one call of a compiled JAX function (`jax.jit(f).lower(...).compile()`).

  XLA counts a multiply-add as 2 FLOPs. The body of a `while` loop (a `lax.scan`) is counted
  once, not once per iteration, so count a sampler as its model's FLOPs times the steps.

  Args:
    compiled: a `jax.stages.Compiled`.

  Returns:
    The FLOP count, or NaN when the backend gives no cost analysis.
  """
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _best_rate(run, flop: float, reps: int) -> float:
  run()  # warm-up
  best = min(_seconds(run) for _ in range(reps))
  return flop / best


def _seconds(run) -> float:
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def jax_matmul_rate(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of an `n x n` fp32 matmul in JAX on the default device (best of `reps`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return _best_rate(lambda: matmul(a, b).block_until_ready(), 2.0 * n**3, reps)


def torch_matmul_rate(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of an `n x n` fp32 matmul in PyTorch with its current thread count."""
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a = torch.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
  b = torch.from_numpy(rng.standard_normal((n, n), dtype=np.float32))
  return _best_rate(lambda: torch.mm(a, b), 2.0 * n**3, reps)


def torch_flops(fn) -> float:
  """FLOPs PyTorch's FlopCounterMode counts for one call of `fn` (matmuls and convolutions)."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top
  counter = FlopCounterMode(display=False)
  with counter:
    fn()
  return float(counter.get_total_flops())
