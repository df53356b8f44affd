"""Multi-host training for real: 2 processes x 2 CPU devices, talking over JAX's distributed
runtime (gloo collectives), each reading its own half of the data.

- They resume from a checkpoint of 1 process x 4 devices and log the losses that run logged,
  fed the same global batches, up to float rounding; they gather samples from both, and
  evaluate them (each drawing its share) to the numbers of the 1-process run.
- SIGTERM to one of them stops both at the same step, with a checkpoint and exit code 0.
- When one dies (kill -9), the other exits with an error that says so within seconds, instead of
  waiting forever in the next collective.

The 2-process runs are `scripts/train.py`, as a user starts them; the 1-process reference runs
in this process on 4 of its 8 devices. Run as a script (`peer`), this file is one of two
processes doing collectives in a loop.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "scripts", "train.py")
# A one-level U-Net: the smallest model that is still the real thing, so that it compiles fast.
OVERRIDES = {"model.channel_mult": (1,), "model.base_channels": 8, "train.batch_size": 16,
             "train.log_every": 1, "sample.num_images": 8, "sample.batch_size": 8,
             "sample.num_steps": 2}
ARGS = [f"--config={REPO}/configs/digits.py:smoke"] + [
    f"--config.{k}={v}".replace(" ", "") for k, v in OVERRIDES.items()]
REFERENCE_STEPS, RESUME_AT = 40, 20
# Evaluation at step RESUME_AT + 2 in both runs: each process draws its devices' share.
EVAL = {"eval.every": RESUME_AT + 2, "eval.num_samples": 16, "eval.batch_size": 8,
        "eval.num_steps": 2}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices, **extra):
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={num_devices}",
             DIFFAX_COMPILATION_CACHE=os.environ["DIFFAX_TEST_COMPILATION_CACHE"],
             PYTHONUNBUFFERED="1", **extra)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  return env


def _losses(workdir):
  from diffax.pipeline import metric_writer  # pylint: disable=g-import-not-at-top
  return {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir)) if "loss" in r}


def _start(cmd, log_path, env):
  """Starts `cmd` with its output going to `log_path` (a pipe nobody reads could fill up)."""
  with open(log_path, "w", encoding="utf-8") as log:
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
  proc.log_path = log_path
  return proc


def _output(proc, timeout):
  """Waits for `proc` and returns what it printed."""
  proc.wait(timeout=timeout)
  with open(proc.log_path, encoding="utf-8") as f:
    return f.read()


def _start_pair(workdir, *args):
  """Starts scripts/train.py as processes 0 and 1 of a 2-process run, 2 CPU devices each."""
  common = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
  return [_start([sys.executable, TRAIN, f"--workdir={workdir}", *ARGS, *args],
                 f"{workdir}.process_{i}.log", _env(2, JAX_PROCESS_ID=str(i), **common))
          for i in range(2)]


@pytest.fixture
def cleanup():
  """Kills what a failed test leaves running."""
  procs = []
  yield procs
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def _wait_for_step(workdir, step, procs, timeout=240):
  deadline = time.time() + timeout
  while max(_losses(workdir), default=0) < step:
    if any(p.poll() is not None for p in procs) or time.time() > deadline:
      for p in procs:
        p.kill()
      logs = [_output(p, 60) for p in procs]
      pytest.fail(f"the run did not reach step {step}:\n" + "\n".join(logs)[-4000:])
    time.sleep(0.05)


def _eval_records(workdir):
  from diffax.pipeline import metric_writer  # pylint: disable=g-import-not-at-top
  return {r["step"]: r for r in metric_writer.read_metrics(str(workdir)) if "eval/fd" in r}


def _one_process_run(workdir, monkeypatch, classifier_run):
  """train_and_evaluate in this process on 4 devices, each step's batch the two processes'
  shards in process order: the global batches of the 2-process run."""
  import jax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, REPO)
  from configs import digits  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import data, parallel, train  # pylint: disable=g-import-not-at-top
  real_iterator, real_mesh = data.create_iterator, parallel.create_mesh

  def both_shards(config, *, start_step=0, process_index=None, process_count=None):
    assert (process_index, process_count) == (0, 1)
    shards = [real_iterator(config, start_step=start_step, process_index=p, process_count=2)
              for p in range(2)]
    for parts in zip(*shards):
      yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  monkeypatch.setattr(data, "create_iterator", both_shards)
  monkeypatch.setattr(parallel, "create_mesh",
                      lambda devices=None, fsdp=1: real_mesh(
                          jax.devices()[:4] if devices is None else devices, fsdp=fsdp))
  config = digits.get_config("smoke")
  config.update_from_flattened_dict(dict(OVERRIDES, **EVAL, **{
      "train.checkpoint_every": RESUME_AT, "train.num_steps": REFERENCE_STEPS,
      "eval.classifier_workdir": str(classifier_run)}))
  train.train_and_evaluate(config, str(workdir))
  monkeypatch.undo()


def test_two_processes_resume_match_one_and_stop_together_on_sigterm(tmp_path, cleanup,
                                                                     monkeypatch,
                                                                     classifier_run):
  one = tmp_path / "one_process"
  _one_process_run(one, monkeypatch, classifier_run)
  expected = _losses(one)

  # The 2-process run resumes from the 1-process run's checkpoint (restored by 2 processes),
  # draws samples once (gathered from both), and is preempted through one process.
  two = tmp_path / "two_processes"
  shutil.copytree(one / "checkpoints" / str(RESUME_AT), two / "checkpoints" / str(RESUME_AT))
  procs = _start_pair(two, "--config.train.checkpoint_every=1000",
                      "--config.train.num_steps=2000",
                      f"--config.train.sample_every={RESUME_AT + 2}",
                      f"--config.eval.classifier_workdir={classifier_run}",
                      *[f"--config.{k}={v}" for k, v in EVAL.items()])
  cleanup.extend(procs)
  _wait_for_step(two, RESUME_AT + 3, procs)
  procs[1].send_signal(signal.SIGTERM)  # the non-chief: process 0 learns it from the runtime
  outs = [_output(p, 120) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)[-4000:]
  losses = _losses(two)
  stopped = max(losses)
  assert sorted(losses) == list(range(RESUME_AT + 1, stopped + 1))
  assert f"resuming {two} at step {RESUME_AT}" in outs[0]
  assert "4 device(s) in 2 process(es), batch 16 (8 per process" in outs[0]
  for out in outs:  # both stopped there (tqdm and log lines share the stream)
    assert f"stopped at step {stopped} of 2000" in out, out[-3000:]
  assert sorted(map(int, os.listdir(two / "checkpoints"))) == [RESUME_AT, stopped]
  assert (two / "samples" / f"step_{RESUME_AT + 2:08d}.png").exists()

  assert stopped <= REFERENCE_STEPS, f"stopped late, at step {stopped}"
  steps = range(RESUME_AT + 1, stopped + 1)
  np.testing.assert_allclose([losses[s] for s in steps], [expected[s] for s in steps],
                             rtol=2e-5)
  assert expected[REFERENCE_STEPS] < expected[1]  # it trains
  # The evaluation's numbers: the processes' shares combine into those of one process.
  step = RESUME_AT + 2
  got, want = _eval_records(two)[step], _eval_records(one)[step]
  for key in ("eval/fd", "eval/kid", "eval/coverage", "eval/fd_floor"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-4, err_msg=key)


@pytest.mark.parametrize("victim", [1, 0])  # 0 also runs the coordination service
def test_a_dead_process_stops_the_other_with_a_clear_error(victim, cleanup):
  """Two processes in a loop of collectives (`peer` below); one is killed mid-run."""
  env = dict(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES="2")
  procs = [subprocess.Popen([sys.executable, __file__, "peer"],
                            env=_env(2, JAX_PROCESS_ID=str(i), **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  cleanup.extend(procs)
  for p in procs:  # both are in the loop
    for line in p.stdout:
      if line.startswith("ready"):
        break
    else:
      pytest.fail(f"a peer did not start: rc {p.wait()}")
  procs[victim].send_signal(signal.SIGKILL)
  killed = time.time()
  survivor = procs[1 - victim]
  try:
    out = survivor.communicate(timeout=120)[0]
  except subprocess.TimeoutExpired:
    pytest.fail(f"process {1 - victim} still runs 120 s after process {victim} died")
  assert survivor.returncode not in (0, None)
  assert "another task died" in out, out[-4000:]
  print(f"process {1 - victim} exited {time.time() - killed:.1f} s after process {victim} "
        "was killed")


def test_config_reaches_the_distributed_runtime(monkeypatch):
  """config.distributed overrides the environment and sets JAX's timeouts."""
  sys.path.insert(0, REPO)
  from configs import digits  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  config = digits.get_config()
  config.distributed.process_id = 2
  config.distributed.heartbeat_timeout = 7
  assert train.initialize_distributed(config)
  assert calls == [(("10.0.0.1:1234", 4, 2),
                    {"initialization_timeout": 300, "heartbeat_timeout_seconds": 7})]
  config.distributed.heartbeat_timeout = 0
  with pytest.raises(ValueError, match="distributed.heartbeat_timeout"):
    train.initialize_distributed(config)


def _peer_main():
  """A process of a 2-process run doing collectives until something stops it."""
  import jax  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import parallel  # pylint: disable=g-import-not-at-top
  assert parallel.initialize_distributed(heartbeat_timeout=5)
  mesh = parallel.create_mesh()
  total = jax.jit(lambda x: x.sum(), out_shardings=parallel.replicated(mesh))
  for i in range(100_000):
    assert float(total(parallel.shard_batch(np.ones(2, np.float32), mesh))) == 4.0
    if i == 10:
      print("ready", flush=True)
    time.sleep(0.01)


if __name__ == "__main__":
  assert sys.argv[1:] == ["peer"]
  _peer_main()
