"""Faults of a training run: preemption signals, a full disk during a save, non-finite updates.

- SIGTERM to `scripts/train.py`, then SIGINT to a resumed run in this process: each saves a
  checkpoint at the step it stops and ends normally (exit code 0), the next start resumes there,
  and the losses equal those of an uninterrupted run.
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
import subprocess
import sys
import threading
import time

from etils import epath
import jax
import numpy as np
import pytest

from configs import digits
from diffax import checkpoint
from diffax import data
from diffax import metric_writer
from diffax import models
from diffax import optim
from diffax import parallel
from diffax import train
from diffax import train_state as train_state_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The failed save leaves a TensorStore callback aimed at Orbax's closed asyncio loop; Python
# reports it when the callback is collected (as in tests/test_checkpoint.py). Harmless.
pytestmark = pytest.mark.filterwarnings(
    "ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning")


def tiny_config(**overrides):
  """tests/test_train.py's model and batch: the same compiled step."""
  c = digits.get_config("smoke")
  c.train.log_every = 1
  c.train.checkpoint_every = 1000
  c.train.batch_size = 16
  c.sample.num_images = 8
  c.sample.batch_size = 8
  c.sample.num_steps = 5
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def losses_by_step(workdir):
  return {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir))}


def _when_step_reached(workdir, step, action, deadline_s=240):
  """Runs `action()` in a thread once `workdir`'s metrics reach `step`."""
  def watch():
    deadline = time.time() + deadline_s
    while max(losses_by_step(workdir), default=0) < step and time.time() < deadline:
      time.sleep(0.05)
    action()
  thread = threading.Thread(target=watch, daemon=True)
  thread.start()
  return thread


def test_sigterm_and_sigint_save_exit_0_and_resume_exactly(tmp_path):
  # SIGTERM to scripts/train.py, as a scheduler sends it.
  log_path = tmp_path.parent / f"{tmp_path.name}.log"
  with open(log_path, "w", encoding="utf-8") as log:  # a file: a pipe could fill up
    run = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "train.py"),
         f"--config={REPO}/configs/digits.py:smoke", f"--workdir={tmp_path}",
         "--config.train.log_every=1", "--config.train.checkpoint_every=1000",
         "--config.train.batch_size=16", "--config.sample.num_images=8",
         "--config.sample.batch_size=8", "--config.sample.num_steps=5",
         "--config.train.num_steps=2000"],
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
                 DIFFAX_COMPILATION_CACHE=os.environ["DIFFAX_TEST_COMPILATION_CACHE"]),
        stdout=log, stderr=subprocess.STDOUT)
  try:
    _when_step_reached(tmp_path, 3, lambda: run.send_signal(signal.SIGTERM))
    run.wait(timeout=300)
  finally:
    if run.poll() is None:
      run.kill()
  out = log_path.read_text()
  assert run.returncode == 0, out[-3000:]
  first_stop = max(losses_by_step(tmp_path))
  assert f"SIGTERM: stopped at step {first_stop} of 2000 after saving checkpoint " in out
  assert os.listdir(tmp_path / "checkpoints") == [str(first_stop)]

  # SIGINT (Ctrl-C) to a run in this process, as in a notebook: it resumes, then stops.
  watcher = _when_step_reached(tmp_path, first_stop + 3,
                               lambda: os.kill(os.getpid(), signal.SIGINT))
  state = train.train_and_evaluate(tiny_config(**{"train.num_steps": 2000}), str(tmp_path))
  watcher.join()
  second_stop = int(state.step)
  assert second_stop >= first_stop + 3
  assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == [first_stop, second_stop]

  resumed = losses_by_step(tmp_path)
  assert sorted(resumed) == list(range(1, second_stop + 1))
  reference_dir = tmp_path / "reference"
  train.train_and_evaluate(tiny_config(**{"train.num_steps": second_stop}), str(reference_dir))
  reference = losses_by_step(reference_dir)
  np.testing.assert_allclose([resumed[s] for s in sorted(reference)],
                             [reference[s] for s in sorted(reference)], rtol=1e-5)


def test_a_failed_save_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
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
  init_fn, _ = models.create(config)
  tx, _ = optim.create_optimizer(config)
  target = parallel.abstract_state(
      lambda rng: train_state_lib.create_train_state(init_fn, tx, rng), parallel.create_mesh(),
      jax.random.key(0))
  with checkpoint.from_config(config, workdir) as ckpt:
    return ckpt.restore(target, step)


def test_nonfinite_updates_are_skipped_and_counted(tmp_path, monkeypatch):
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
