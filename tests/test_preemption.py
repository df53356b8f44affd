"""Faults of a training run: preemption signals, a full disk during a save, non-finite updates.

- SIGTERM, then SIGINT, to a run: each saves a checkpoint at the step it stops and returns
  normally (so scripts/train.py exits 0; tests/test_multihost.py signals that script), the next
  start resumes there, and the losses equal those of an uninterrupted run.
- A save that fails midway (an injected ENOSPC) stops the run with an error naming the step and
  the checkpoint to resume from; that checkpoint restores and the rerun matches.
- With config.train.nonfinite = "skip", NaN updates leave params untouched, are counted as
  skipped_steps, and training goes on.

The model and config are tests/test_train.py's, so the persistent compilation cache serves the
step compiled there (or here, whichever runs first).
"""

import errno
import os
import signal
import threading
import time

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import data
from diffax.pipeline import errors
from diffax.pipeline import metric_writer
from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import train
from diffax.pipeline import train_log

# The failed save leaves a TensorStore callback aimed at Orbax's closed asyncio loop and an
# unawaited write coroutine; Python reports them when they are collected, possibly during a
# later test (as in tests/test_checkpoint.py). Harmless.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


# No periodic checkpoints unless a test asks: the stops themselves must save.
NO_PERIODIC_SAVES = {"train.checkpoint_every": 1000}


def losses_by_step(workdir):
  return {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir))}


def _signal_at_step(workdir, step, signum, timeout_s=240):
  """Sends `signum` to this process once `workdir`'s metrics reach `step` (from a thread).

  Returns a function that waits for the thread and says whether the signal was sent. Nothing is
  sent if the step is not reached (a failed run must not be followed by a stray signal).
  """
  stop_watching = threading.Event()

  def watch():
    deadline = time.time() + timeout_s
    while not stop_watching.is_set() and time.time() < deadline:
      if max(losses_by_step(workdir), default=0) >= step:
        os.kill(os.getpid(), signum)
        return True
      time.sleep(0.02)
    return False

  result = []
  thread = threading.Thread(target=lambda: result.append(watch()), daemon=True)
  thread.start()

  def join():
    stop_watching.set()
    thread.join()
    return result[0]

  return join


def test_sigterm_and_sigint_save_return_and_resume_exactly(tmp_path, tiny_config):
  config = tiny_config(**{**NO_PERIODIC_SAVES, "train.num_steps": 2000})
  stops = []
  for signum in (signal.SIGTERM, signal.SIGINT):
    sent = _signal_at_step(tmp_path, (stops[-1] if stops else 0) + 3, signum)
    try:
      state = train.train_and_evaluate(config, str(tmp_path))  # returns: the script exits 0
    finally:
      assert sent(), "the signal was never sent"
    stop = int(state.step)
    assert stop >= (stops[-1] if stops else 0) + 3
    assert max(losses_by_step(tmp_path)) == stop
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == stops + [stop]
    stops.append(stop)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

  resumed = losses_by_step(tmp_path)
  assert sorted(resumed) == list(range(1, stops[-1] + 1))
  reference_dir = tmp_path / "reference"
  reference_config = tiny_config(**{**NO_PERIODIC_SAVES, "train.num_steps": stops[-1]})
  train.train_and_evaluate(reference_config, str(reference_dir))
  reference = losses_by_step(reference_dir)
  np.testing.assert_allclose([resumed[s] for s in sorted(reference)],
                             [reference[s] for s in sorted(reference)], rtol=1e-5)


def test_guard_stops_at_the_next_step_and_a_second_ctrl_c_aborts():
  with parallel.PreemptionGuard() as guard:
    assert not guard.stop_requested(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.stop_requested(2) and guard.stop_requested(3) and guard.signal_name == "SIGTERM"
  with parallel.PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.stop_requested(1) and guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)  # the save hangs: Ctrl-C again
      time.sleep(1)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_several_processes_without_the_preemption_service_keep_training(monkeypatch):
  """`jax.distributed.initialize` with the service off: warn once and never stop, not crash."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  calls = []

  def no_service(step):
    calls.append(step)
    raise RuntimeError("Preemption sync manager has not been initialized.")

  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", no_service)
  guard = parallel.PreemptionGuard()
  guard._multiprocess = True  # pylint: disable=protected-access
  assert not guard.stop_requested(1) and not guard.stop_requested(2)
  assert calls == [1]  # asked once, then remembered


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch,
                                                            tiny_config):
  config = tiny_config(**{"train.num_steps": 6, "train.checkpoint_every": 3})
  write_text = epath.Path.write_text

  def full_disk(path, *args, **kwargs):  # Orbax writes step 6's metadata: the disk is full
    if "6.orbax-checkpoint-tmp" in str(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return write_text(path, *args, **kwargs)

  monkeypatch.setattr(epath.Path, "write_text", full_disk)
  with pytest.raises(checkpoint.CheckpointSaveError,
                     match=r"checkpoints/6 failed: OSError: \[Errno 28\] No space left on "
                           r"device.*checkpoints/3, is intact: a restart resumes from it"):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  first = losses_by_step(tmp_path)
  assert sorted(first) == list(range(1, 7))
  with checkpoint.from_config(config, tmp_path) as ckpt:
    assert ckpt.all_steps() == [3]

  state = train.train_and_evaluate(config, str(tmp_path))  # resumes from 3
  assert int(state.step) == 6
  assert losses_by_step(tmp_path) == first
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]  # the tmp dir is gone


def _restore(config, workdir, step):
  init_fn = build.model(config).init_fn
  tx, _ = optim.create_optimizer(config)
  target = parallel.abstract_state(
      lambda rng: train_state_lib.create_train_state(init_fn, tx, rng), parallel.create_mesh(),
      jax.random.key(0))
  with checkpoint.from_config(config, workdir) as ckpt:
    return ckpt.restore(target, step)


def test_nonfinite_updates_are_skipped_and_counted(tmp_path, monkeypatch, tiny_config):
  real = data.create_iterator

  def poisoned(config, **kwargs):  # one pixel of the batches of steps 3 and 4 is NaN
    for i, batch in enumerate(real(config, **kwargs)):
      if i in (2, 3):
        image = batch["image"].copy()
        image[0, 0, 0, 0] = np.nan
        batch = dict(batch, image=image)
      yield batch

  monkeypatch.setattr(data, "create_iterator", poisoned)
  config = tiny_config(**{"train.nonfinite": "skip", "train.num_steps": 4,
                          "train.checkpoint_every": 2})
  state = train.train_and_evaluate(config, str(tmp_path))  # goes on to the end
  records = {r["step"]: r for r in metric_writer.read_metrics(str(tmp_path))}
  assert {s: r["skipped_steps"] for s, r in records.items()} == {1: 0, 2: 0, 3: 1, 4: 1}
  assert [records[s]["loss"] for s in (3, 4)] == ["nan", "nan"]  # no update to average
  assert all(np.isfinite(records[s]["loss"]) for s in (1, 2))
  assert int(state.step) == 4
  after_2 = _restore(config, tmp_path, 2)
  jax.tree.map(np.testing.assert_array_equal,  # steps 3 and 4 changed nothing but the step
               (after_2.params, after_2.ema_params, after_2.opt_state),
               (state.params, state.ema_params, state.opt_state))


# --- the loop stays close to the computation ---------------------------------------------------

def _heavy_steps(monkeypatch):
  """Makes every train step a deliberately slow computation (~0.5 s of matrix products on 2
  cores, pure XLA, so the host's dispatch stays asynchronous as on an accelerator)."""
  from diffax.pipeline import tasks  # pylint: disable=g-import-not-at-top
  real = tasks.create

  def heavy(loss):
    a = jnp.full((1024, 1024), 1.0 / 1024) + jax.lax.stop_gradient(loss) * 0.0
    a = jax.lax.fori_loop(0, 40, lambda _, m: jnp.tanh(m @ a), a)
    return jnp.sum(a) * 0.0

  def create(config):
    task = real(config)
    loss_fn = task.loss_fn

    def slow_loss(params, batch, rng):
      loss, aux = loss_fn(params, batch, rng)
      return loss + jax.lax.stop_gradient(heavy(loss)), aux

    task.loss_fn = slow_loss
    return task

  monkeypatch.setattr(tasks, "create", create)


def test_sigterm_on_a_slow_step_saves_within_one_step_plus_the_save(tmp_path, monkeypatch,
                                                                   tiny_config, capsys):
  """SIGTERM during step ~5: the run finishes the step in flight, saves it and returns within
  one step time plus the save, not after the many steps an unbounded loop would have queued
  (the log syncs only every 1000 steps here, so nothing else holds the loop back)."""
  _heavy_steps(monkeypatch)
  returns, signalled = [], []
  real_add = train_log.TrainLog.add

  def add(self, step, metrics):
    real_add(self, step, metrics)
    returns.append(time.monotonic())
    if len(returns) == 4:
      def send():
        time.sleep(0.1)
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)
      threading.Thread(target=send, daemon=True).start()

  monkeypatch.setattr(train_log.TrainLog, "add", add)
  config = tiny_config(**{"train.num_steps": 40, "train.log_every": 1000,
                          "train.checkpoint_every": 1000})
  state = train.train_and_evaluate(config, str(tmp_path))
  elapsed = time.monotonic() - signalled[0]
  step_s = float(np.median(np.diff(returns[:4])))  # the loop follows the steps: a step's time
  stop = int(state.step)
  assert 4 <= stop <= 6 and sorted(os.listdir(tmp_path / "checkpoints")) == [str(stop)], stop
  # The step in flight, at most max_steps_ahead = 0 more, then the save of this tiny state
  # (0.1 s here; 2 s of margin for a busy machine).
  assert elapsed < (1 + config.train.max_steps_ahead) * step_s + 2.0, (elapsed, step_s)
  assert f"stopped at step {stop} of 40, " in capsys.readouterr().out


def test_a_nan_is_caught_at_its_step_without_running_ahead(tmp_path, monkeypatch, tiny_config):
  read = []
  real = data.create_iterator

  def poisoned(config, **kwargs):
    for i, batch in enumerate(real(config, **kwargs)):
      read.append(i)
      if i == 3:  # the batch of step 4
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(data, "create_iterator", poisoned)
  config = tiny_config(**{"train.num_steps": 2000, "train.log_every": 1000,
                          "train.checkpoint_every": 1000})
  with pytest.raises(errors.NonFiniteLossError, match="at step 4;"):
    train.train_and_evaluate(config, str(tmp_path))
  assert len(read) <= 4 + 1 + config.train.max_steps_ahead  # not the 1000 of a log interval
