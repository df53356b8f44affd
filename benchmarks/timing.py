"""Wall-clock timing: warm-up, then repetitions interleaved across implementations.

Every callable passed here must block until its work is done (`jax.block_until_ready`, or a
PyTorch CPU op, which is synchronous). Implementations are run in ABBA order, repetition by
repetition, so slow drift of the machine (other processes, thermal state) hits both alike; the
ratio of two implementations is the median of the per-repetition ratios.
"""

import statistics
import time
from typing import Callable, Mapping, Optional


def timed(fn: Callable[[], object]) -> float:
  """Seconds one call of `fn` takes."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def interleave(cases: Mapping[str, Callable[[], object]], reps: int, warmup: int = 1,
               pause: float = 0.05, budget_s: Optional[float] = None,
               min_reps: int = 1) -> dict[str, list[float]]:
  """Times every case `reps` times, alternating between them.

  Args:
    cases: name -> blocking callable doing one unit of work (one sampler run, one train step).
    reps: timed repetitions per case.
    warmup: untimed calls per case first (compilation, allocator and thread-pool warm-up).
    pause: seconds of sleep before each timed call, so one library's spinning worker threads
      (OpenMP, Eigen) have gone idle before the other starts.
    budget_s: if set, fewer repetitions (but at least `min_reps`) when one round of all cases
      took so long in warm-up that `reps` rounds would exceed this many seconds.
    min_reps: the fewest repetitions `budget_s` may leave.

  Returns:
    name -> the durations in seconds, in the order they were taken.
  """
  names = list(cases)
  round_s = 0.0
  for name in names:
    for _ in range(warmup):
      round_s += timed(cases[name]) / warmup
  if budget_s and warmup and round_s > 0:
    reps = max(min_reps, min(reps, int(budget_s // round_s)))
  times = {name: [] for name in names}
  for rep in range(reps):
    for name in (names if rep % 2 == 0 else names[::-1]):  # ABBA
      time.sleep(pause)
      times[name].append(timed(cases[name]))
  return times


def median(xs) -> float:
  return float(statistics.median(xs))


def paired_ratio(slow: list[float], fast: list[float]) -> float:
  """Median over repetitions of slow[i] / fast[i]: how many times faster `fast` is."""
  return median([s / f for s, f in zip(slow, fast)])
