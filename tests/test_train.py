"""End-to-end tests of the training pipeline: train, resume, survive kills, sample.

One tiny model (the `smoke` variant of the digits config) serves every test, so the step
compiles once and the persistent compilation cache serves the rest. conftest.py gives the
process 8 fake CPU devices, so every run here is data-parallel over 8 devices.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import digits
from diffax.pipeline import data
from diffax.pipeline import errors
from diffax.pipeline import metric_writer
from diffax.pipeline import tasks
from diffax.pipeline import train
from conftest import REPO, subprocess_env

def losses_by_step(workdir):
  return {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir))}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_config):
  """20 uninterrupted steps: the run every resumed run must reproduce."""
  workdir = tmp_path_factory.mktemp("reference")
  state = train.train_and_evaluate(tiny_config(), str(workdir))
  return workdir, state


def test_run_writes_everything_a_user_looks_at(reference_run):
  workdir, state = reference_run
  assert int(state.step) == 20
  losses = losses_by_step(workdir)
  assert sorted(losses) == list(range(1, 21))
  assert all(np.isfinite(v) for v in losses.values())
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]
  assert (workdir / "config.json").exists()
  assert os.listdir(workdir / "tensorboard")
  grid = workdir / "samples" / "step_00000020.png"
  assert grid.exists()
  samples = np.load(grid.with_suffix(".npz"))["samples"]
  assert samples.shape == (8, 8, 8, 1) and np.all(np.isfinite(samples))


def test_training_grids_are_drawn_from_the_ema_params(reference_run, tiny_config):
  workdir, state = reference_run
  grid = np.load(workdir / "samples" / "step_00000020.npz")["samples"]
  task = tasks.create(tiny_config())
  request = task.sample_request(mesh=None)
  ema, raw = jax.device_get((state.ema_params, state.params))
  np.testing.assert_allclose(request(ema, task.sample_rng(20)), grid, atol=1e-5)
  assert np.abs(request(raw, task.sample_rng(20)) - grid).max() > 1e-3  # raw params differ


def test_resumed_run_logs_identical_losses(reference_run, tmp_path, tiny_config):
  workdir, _ = reference_run
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 10}), str(tmp_path))
  assert sorted(losses_by_step(tmp_path)) == list(range(1, 11))
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  resumed, reference = losses_by_step(tmp_path), losses_by_step(workdir)
  assert sorted(resumed) == list(range(1, 21))
  for step in range(11, 21):
    assert resumed[step] == reference[step], step


def test_an_fsdp_run_resumed_replicated_logs_the_reference_losses(reference_run, tmp_path,
                                                                  tiny_config, monkeypatch):
  """The state sharded over 'fsdp' (4 of the 8 devices per copy) trains like the replicated
  run, and its checkpoint resumes on a replicated mesh."""
  from diffax.pipeline import parallel  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 1)  # the smoke model's leaves are all small
  workdir, _ = reference_run
  train.train_and_evaluate(tiny_config(**{"train.num_steps": 10, "parallel.fsdp": 4}),
                           str(tmp_path))
  train.train_and_evaluate(tiny_config(), str(tmp_path))
  resumed, reference = losses_by_step(tmp_path), losses_by_step(workdir)
  assert sorted(resumed) == list(range(1, 21))
  np.testing.assert_allclose([resumed[s] for s in range(1, 21)],
                             [reference[s] for s in range(1, 21)], rtol=1e-5)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(reference_run, tmp_path,
                                                                 tiny_config):
  workdir, _ = reference_run
  shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
  newest = tmp_path / "checkpoints" / "20"
  for root, _, files in os.walk(newest):
    for name in files:
      if name.startswith("manifest") or ".process_" in root:
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(7)
  state = train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert int(state.step) == 20
  assert any(name.startswith("20.corrupt") for name in os.listdir(tmp_path / "checkpoints"))
  resumed, reference = losses_by_step(tmp_path), losses_by_step(workdir)
  for step in range(11, 21):
    assert resumed[step] == reference[step], step


def test_killed_run_restarts_and_matches(reference_run, tmp_path):
  """kill -9 at an arbitrary step; the restart resumes and logs the reference losses."""
  workdir, _ = reference_run
  config_arg = f"--config={REPO}/configs/digits.py:smoke"
  overrides = ["--config.train.log_every=1", "--config.train.checkpoint_every=10",
               "--config.train.batch_size=16", "--config.sample.num_images=8",
               "--config.sample.batch_size=8", "--config.sample.num_steps=5"]
  env = subprocess_env()
  cmd = [sys.executable, os.path.join(REPO, "scripts", "train.py"), config_arg,
         f"--workdir={tmp_path}"] + overrides
  long_run = subprocess.Popen(cmd + ["--config.train.num_steps=2000"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  while time.time() < deadline and long_run.poll() is None:
    if max(losses_by_step(tmp_path), default=0) >= 12:
      break
    time.sleep(0.05)
  assert long_run.poll() is None, long_run.stderr.read().decode()[-3000:]
  long_run.send_signal(signal.SIGKILL)
  long_run.wait()
  assert long_run.returncode == -signal.SIGKILL

  finish = subprocess.run(cmd + ["--config.train.num_steps=20"], env=env,
                          capture_output=True, text=True, timeout=300)
  assert finish.returncode == 0, finish.stderr[-3000:]
  resumed, reference = losses_by_step(tmp_path), losses_by_step(workdir)
  assert sorted(resumed) == list(range(1, 21))
  np.testing.assert_allclose([resumed[s] for s in range(1, 21)],
                             [reference[s] for s in range(1, 21)], rtol=1e-5)


def test_sample_script_writes_png_and_npz(reference_run, tmp_path):
  workdir, _ = reference_run
  out = tmp_path / "grid.png"
  env = subprocess_env()
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "scripts", "sample.py"), f"--workdir={workdir}",
       "--num_samples=6", "--sampler=ddpm", "--num_steps=4", f"--out={out}"],
      env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  samples = np.load(tmp_path / "grid.npz")["samples"]
  assert samples.shape == (6, 8, 8, 1) and samples.dtype == np.float32
  assert np.all(np.abs(samples) <= 1.0 + 1e-6)  # clip_x0 keeps DDPM's x0 estimates in range
  assert out.exists()


def test_nonfinite_loss_stops_without_saving(tmp_path, monkeypatch, tiny_config):
  real = data.create_iterator

  def poisoned(config, **kwargs):
    for i, batch in enumerate(real(config, **kwargs)):
      if i >= 3:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      yield batch

  monkeypatch.setattr(data, "create_iterator", poisoned)
  with pytest.raises(errors.NonFiniteLossError, match="step 4"):
    train.train_and_evaluate(tiny_config(**{"train.checkpoint_every": 4}), str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")
  assert max(losses_by_step(tmp_path)) == 3


def test_mock_tfds_dataset_trains_and_resumes(tmp_path, tiny_config):
  config = tiny_config(**{"data.dataset": "mnist", "train.num_steps": 4,
                          "train.checkpoint_every": 2})
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(config, str(tmp_path))
    with config.unlocked():
      config.train.num_steps = 6
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  assert sorted(losses_by_step(tmp_path)) == list(range(1, 7))


@pytest.mark.parametrize("key, value, match", [
    ("sample.sampler", "ddmi", r"config\.sample: unknown sampler 'ddmi'"),
    ("diffusion.schedule", "quadratic", r"config\.diffusion\.schedule='quadratic'"),
    ("diffusion.prediction", "noise", r"config\.diffusion: unknown prediction 'noise'"),
    ("diffusion.loss_weighting", "snr", r"config\.diffusion\.loss_weighting='snr'"),
    ("model.name", "dit", r"config\.model: unknown model name 'dit'"),
    ("data.dataset", "not_a_dataset", "not_a_dataset"),
    ("train.batch_size", 12, "batch_size=12"),
    ("train.num_steps", 0, r"config\.train\.num_steps must be an int >= 1"),
    ("sample.num_steps", 5000, r"config\.sample\.num_steps=5000 exceeds"),
    ("train.grad_accum_steps", 4, r"batch_size=16 must be a multiple of .*grad_accum_steps=4"),
    ("model.dtype", "bf16", "model.dtype"),
    ("train.nonfinite", "ignore", "train.nonfinite"),
])
def test_bad_config_fails_before_anything_runs(tmp_path, key, value, match, tiny_config):
  start = time.perf_counter()
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))
  assert time.perf_counter() - start < 60  # guards against a network retry loop, not speed
  assert not os.listdir(tmp_path)  # nothing written: no config.json, no checkpoints


def test_configs_are_locked_and_complete():
  from configs import cifar10_ddpm, mnist  # pylint: disable=g-import-not-at-top
  for module in (digits, mnist, cifar10_ddpm):
    c = module.get_config()
    with pytest.raises(AttributeError, match="num_steps"):
      c.train.nmu_steps = 1
    for key in ("seed", "data.dataset", "data.image_size", "diffusion.schedule",
                "diffusion.num_steps", "diffusion.prediction", "train.num_steps",
                "train.batch_size", "train.log_every", "train.checkpoint_every",
                "train.sample_every", "optim.learning_rate", "sample.sampler",
                "sample.num_steps", "sample.eta"):
      node = c
      for part in key.split("."):
        node = node[part]
