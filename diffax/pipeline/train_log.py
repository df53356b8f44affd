"""The training loop's record: metrics summed on device, a progress bar of finished steps,
and every `log_every` steps one line of metrics.jsonl and TensorBoard.

It also keeps the loop close to the computation. JAX dispatches steps asynchronously: without
a bound, the Python loop runs many steps ahead of the device, and a stop request, a non-finite
loss and the progress bar all wait for that backlog (on a 7.5 s step, a SIGTERM once took two
minutes to be honoured). `add` blocks until at most `max_ahead` dispatched steps are unfinished,
reading one scalar per finished step (its non-finite flag): a stop happens within
`1 + max_ahead` steps plus the save, a NaN is reported at the step it happened, and the bar and
`steps_per_sec` count finished steps.

A non-finite loss or gradient: with `config.train.nonfinite = "stop"` the run stops
(`errors.NonFiniteLossError`, naming the step); with "skip" the step already dropped the update
and the skipped steps are counted.
"""

import collections
import operator
import time

from absl import logging
import jax
import jax.numpy as jnp
import tqdm

from diffax.pipeline import errors
from diffax.pipeline import metric_writer


def report(message: str, *, every_process: bool = False) -> None:
  """Prints a line above the progress bar (process 0 only) and logs it.

  With `every_process`, the other processes of a multi-host run log it as a warning, so that it
  shows in their logs too (scripts/train.py logs warnings and up).
  """
  if jax.process_index() == 0:
    logging.info(message)
    tqdm.tqdm.write(message)
  elif every_process:
    logging.warning("process %d: %s", jax.process_index(), message)
  else:
    logging.info(message)


def sum_metrics(summed, metrics):
  """Adds one step's metrics to the running sums; a skipped (non-finite) step adds only to
  `nonfinite`, so the sums average over the applied updates."""
  skipped = metrics["nonfinite"] > 0
  added = {k: v if k == "nonfinite" else jnp.where(skipped, 0.0, v)
           for k, v in metrics.items()}
  return added if summed is None else jax.tree.map(operator.add, summed, added)


class TrainLog:
  """Accumulates step metrics, follows the steps as they finish, and writes the metrics
  (process 0) at the log steps.

  Args:
    workdir: the run directory (its metrics.jsonl and tensorboard/).
    start_step: the step the run starts (or resumes) at.
    num_steps: the last step.
    batch_size: the global batch, for images per second.
    skip_nonfinite: count non-finite steps (True) or stop on them (False).
    max_ahead: how many dispatched steps may be unfinished when `add` returns (>= 0).
    latest_checkpoint: `() -> step` of the newest checkpoint, named when the run must stop.
  """

  def __init__(self, workdir, *, start_step: int, num_steps: int, batch_size: int,
               skip_nonfinite: bool, max_ahead: int = 0, latest_checkpoint=lambda: None):
    self._chief = jax.process_index() == 0
    self._writer = (metric_writer.MetricWriter(workdir, start_step=start_step) if self._chief
                    else None)
    self._progress = tqdm.tqdm(total=num_steps, initial=start_step, desc="training",
                               unit="step", disable=not self._chief, dynamic_ncols=True)
    self._accumulate = jax.jit(sum_metrics, donate_argnums=0)
    self._batch_size = batch_size
    self._skip_nonfinite = skip_nonfinite
    self._max_ahead = max_ahead
    self._latest_checkpoint = latest_checkpoint
    self._pending = collections.deque()  # (step, its non-finite flag on device), oldest first
    self._reset()

  def _reset(self):
    self._summed, self._steps, self._start = None, 0, time.perf_counter()

  def add(self, step: int, metrics) -> None:
    """Adds the metrics of dispatched step `step` (summed on device), then waits until at most
    `max_ahead` dispatched steps are unfinished.

    Raises:
      errors.NonFiniteLossError: a finished step had a non-finite loss or gradient and
        non-finite steps are not skipped.
    """
    self._summed = self._accumulate(self._summed, metrics)
    self._steps += 1
    self._pending.append((step, metrics["nonfinite"]))
    while len(self._pending) > self._max_ahead:
      self._finish_oldest()

  def _finish_oldest(self) -> None:
    step, nonfinite = self._pending.popleft()
    if float(nonfinite) and not self._skip_nonfinite:  # blocks until the step has finished
      self._pending.clear()
      raise errors.NonFiniteLossError(
          f"non-finite loss or gradient at step {step}; stopping without saving this state. "
          f"Newest checkpoint: step {self._latest_checkpoint()}. Lower "
          f"config.optim.learning_rate, check the data, or set config.train.nonfinite=skip to "
          f"drop such updates.")
    self._progress.update(1)

  def finish_all(self) -> None:
    """Waits for every dispatched step (checking each as `add` does)."""
    while self._pending:
      self._finish_oldest()

  def write(self, step: int) -> dict:
    """Waits for every dispatched step, then writes the interval's means as the metrics of
    `step` and resets.

    Returns:
      The scalars written.

    Raises:
      errors.NonFiniteLossError: as `add`.
    """
    self.finish_all()
    sums = {k: float(v) for k, v in jax.device_get(self._summed).items()}
    nonfinite = round(sums.pop("nonfinite"))
    applied = self._steps - nonfinite
    scalars = {k: v / applied if applied else float("nan") for k, v in sums.items()}
    if self._skip_nonfinite:
      scalars["skipped_steps"] = nonfinite
      if nonfinite:
        report(f"step {step}: skipped {nonfinite} of {self._steps} update(s) with a non-finite "
               f"loss or gradient")
    elapsed = time.perf_counter() - self._start
    scalars["steps_per_sec"] = self._steps / elapsed
    scalars["images_per_sec"] = self._steps * self._batch_size / elapsed
    if self._writer is not None:
      self._writer.write(step, scalars)
    self._progress.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
    self._reset()
    return scalars

  def write_scalars(self, step: int, scalars: dict) -> None:
    """Writes other scalars of `step` (e.g. an evaluation's) as their own metrics.jsonl line
    and to TensorBoard (process 0)."""
    if self._writer is not None and scalars:
      self._writer.write(step, scalars)

  def close(self) -> None:
    self._progress.close()
    if self._writer is not None:
      self._writer.close()
