"""Tests of data parallelism: 1 device, 8 devices and 2 processes x 4 devices agree.

Run as a script (`python tests/test_parallel.py WORKER_ARGS`) this file is one process of the
two-process run; nothing here touches a device at import time, so that the worker can join
the distributed runtime first.
"""

import functools
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import step as train_step_lib

DIM, HIDDEN, BATCH_SIZE, NUM_STEPS = 8, 16, 16, 5


class _Config:
  """The few `config.optim` fields the optimizer and step read (no configs import needed)."""

  class optim:  # pylint: disable=invalid-name
    learning_rate = 0.05
    warmup_steps = 2
    b1, b2, eps = 0.9, 0.999, 1e-8
    weight_decay = 0.01
    grad_clip_norm = 1.0
    ema_decay = 0.9


def init_fn(rng):
  k1, k2 = jax.random.split(rng)
  return {"w1": jax.random.normal(k1, (DIM, HIDDEN)) / np.sqrt(DIM),
          "b1": jnp.zeros(HIDDEN),
          "w2": jax.random.normal(k2, (HIDDEN, DIM)) / np.sqrt(HIDDEN)}


def loss_fn(params, batch, rng):
  """A tiny denoising autoencoder; centring on the batch mean couples all examples."""
  x = batch["x"]  # [B, DIM]
  x = x - jnp.mean(x, axis=0, keepdims=True)
  noisy = x + 0.5 * jax.random.normal(rng, x.shape)  # drawn on the sharded batch
  out = jnp.tanh(noisy @ params["w1"] + params["b1"]) @ params["w2"]  # [B, DIM]
  loss = jnp.mean((out - x) ** 2)
  return loss, {"loss": loss}


def global_batches():
  rng = np.random.default_rng(0)
  return [{"x": rng.normal(size=(BATCH_SIZE, DIM)).astype(np.float32)} for _ in range(NUM_STEPS)]


def run(mesh, batches):
  """NUM_STEPS train steps on `mesh`; returns (losses, final params, final state)."""
  tx, lr_schedule = optim.create_optimizer(_Config)
  create = functools.partial(train_state_lib.create_train_state, init_fn, tx)
  state = parallel.create_sharded_state(create, mesh, jax.random.key(0))
  step = parallel.compile_train_step(
      train_step_lib.make_train_step(loss_fn, tx, _Config, lr_schedule), mesh, state)
  base_rng = parallel.replicate(jax.random.key(1), mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, parallel.shard_batch(batch, mesh), base_rng)
    losses.append(float(metrics["loss"]))
  params = jax.tree.map(np.asarray, jax.device_get(state.params))
  return np.array(losses), params, state


@pytest.fixture(scope="module")
def eight_device_run():
  assert len(jax.devices()) == 8, "tests/conftest.py should give 8 CPU devices"
  return run(parallel.create_mesh(), global_batches())


def test_one_and_eight_devices_agree(eight_device_run):
  losses8, params8, _ = eight_device_run
  losses1, params1, _ = run(parallel.create_mesh(jax.devices()[:1]), global_batches())
  assert losses8[-1] < losses8[0]  # it trains
  np.testing.assert_allclose(losses8, losses1, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params8, params1)


def test_state_replicated_batch_sharded_and_state_donated():
  mesh = parallel.create_mesh()
  assert mesh.axis_names == ("data", "fsdp") and mesh.size == 8
  tx, _ = optim.create_optimizer(_Config)
  create = functools.partial(train_state_lib.create_train_state, init_fn, tx)
  state = parallel.create_sharded_state(create, mesh, jax.random.key(0))
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)
    assert len(leaf.addressable_shards) == 8
    assert all(s.data.shape == leaf.shape for s in leaf.addressable_shards)

  batch = parallel.shard_batch(global_batches()[0], mesh)["x"]
  assert batch.shape == (BATCH_SIZE, DIM)
  assert batch.sharding.is_equivalent_to(parallel.batch_sharding(mesh), batch.ndim)
  shards = batch.addressable_shards
  assert len(shards) == 8 and len({s.device for s in shards}) == 8
  assert all(s.data.shape == (BATCH_SIZE // 8, DIM) for s in shards)
  np.testing.assert_array_equal(
      np.concatenate([np.asarray(s.data) for s in sorted(shards, key=lambda s: s.index[0].start)]),
      global_batches()[0]["x"])

  step = parallel.compile_train_step(
      train_step_lib.make_train_step(loss_fn, tx, _Config), mesh)
  new_state, metrics = step(state, {"x": batch}, parallel.replicate(jax.random.key(1), mesh))
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))  # donated
  for leaf in jax.tree.leaves((new_state, metrics)):
    assert leaf.sharding.is_equivalent_to(parallel.replicated(mesh), leaf.ndim)

  abstract = parallel.abstract_state(create, mesh, jax.random.key(0))
  assert jax.tree.structure(abstract) == jax.tree.structure(new_state)
  assert all(a.sharding == parallel.replicated(mesh) for a in jax.tree.leaves(abstract))


# --- fully sharded data parallelism ----------------------------------------------------------

@pytest.fixture
def shard_everything(monkeypatch):
  """The test model's leaves are tiny: shard every leaf a 'fsdp' axis divides."""
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 1)


@pytest.mark.parametrize("fsdp", [2, 4])
def test_fsdp_matches_data_parallelism_and_shards_the_state(fsdp, shard_everything):
  devices = jax.devices()[:4]
  losses_dp, params_dp, _ = run(parallel.create_mesh(devices), global_batches())
  mesh = parallel.create_mesh(devices, fsdp=fsdp)
  assert dict(mesh.shape) == {"data": 4 // fsdp, "fsdp": fsdp}
  losses, params, state = run(mesh, global_batches())
  np.testing.assert_allclose(losses, losses_dp, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               params, params_dp)
  # Each device holds 1/fsdp of the state: its shards' bytes over the whole state's.
  leaves = jax.tree.leaves(state)
  on_device0 = sum(s.data.nbytes for x in leaves for s in x.addressable_shards
                   if s.device == devices[0])
  total = sum(x.nbytes for x in leaves)
  assert on_device0 / total == pytest.approx(1 / fsdp, rel=0.1), on_device0 / total
  w1 = state.params["w1"]  # [8, 16]: split along its largest dimension
  assert w1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


def test_small_leaves_stay_replicated_and_bad_fsdp_fails():
  mesh = parallel.create_mesh(jax.devices()[:4], fsdp=4)
  assert parallel.leaf_sharding(mesh, (16,)).spec == jax.sharding.PartitionSpec()
  assert parallel.leaf_sharding(mesh, (3, 3, 64, 64)).spec == (
      jax.sharding.PartitionSpec(None, None, "fsdp", None))
  assert parallel.leaf_sharding(mesh, (3, 3, 63, 63)).spec == jax.sharding.PartitionSpec()
  with pytest.raises(ValueError, match=r"config\.parallel\.fsdp=3 must be a positive divisor"):
    parallel.create_mesh(jax.devices()[:4], fsdp=3)


def test_checkpoints_restore_across_shardings(tmp_path, shard_everything):
  from diffax.pipeline import checkpoint  # pylint: disable=g-import-not-at-top
  tx, _ = optim.create_optimizer(_Config)
  create = functools.partial(train_state_lib.create_train_state, init_fn, tx)
  replicated = parallel.create_mesh(jax.devices()[:4])
  sharded = parallel.create_mesh(jax.devices()[:4], fsdp=4)
  state = parallel.create_sharded_state(create, replicated, jax.random.key(3))
  want = jax.device_get(state)
  for save_mesh, load_mesh, name in ((replicated, sharded, "a"), (sharded, replicated, "b")):
    with checkpoint.Checkpointer(tmp_path / name) as ckpt:
      ckpt.save(1, parallel.create_sharded_state(create, save_mesh, jax.random.key(3)))
    with checkpoint.Checkpointer(tmp_path / name) as ckpt:
      target = parallel.abstract_state(create, load_mesh, jax.random.key(0))
      restored = ckpt.restore(target)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), want)
    for leaf, spec in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
      assert leaf.sharding.is_equivalent_to(spec.sharding, leaf.ndim)


def test_batch_not_divisible_fails_with_a_clear_error():
  mesh = parallel.create_mesh()
  parallel.check_batch_size(16, mesh)
  for bad in (12, 4, 0):
    with pytest.raises(ValueError, match=rf"config\.train\.batch_size={bad}.*\(8"):
      parallel.check_batch_size(bad, mesh)
  with pytest.raises(ValueError, match="8 device"):
    parallel.shard_batch({"x": np.zeros((12, DIM), np.float32)}, mesh)
  assert parallel.process_batch_size(16, mesh) == 16


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
              "DIFFAX_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    parallel.initialize_distributed()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one(eight_device_run, tmp_path):
  """2 processes x 4 CPU devices, each feeding half of every batch, match 1 process x 8."""
  losses8, params8, _ = eight_device_run
  env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}",
             JAX_NUM_PROCESSES="2", PYTHONPATH=os.pathsep.join(sys.path),
             # The test session's persistent compilation cache (tests/conftest.py).
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir or "",
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  out = tmp_path / "result.npz"
  procs = [subprocess.Popen([sys.executable, __file__, str(out)],
                            env=dict(env, JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=120)[0].decode() for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
  result = np.load(out)
  np.testing.assert_allclose(result["losses"], losses8, rtol=1e-5, atol=1e-6)
  for name, value in params8.items():
    np.testing.assert_allclose(result[name], value, rtol=1e-5, atol=1e-6)


def _worker(out_path):
  """One of two processes: 4 local CPU devices, this process's half of each global batch."""
  jax.config.update("jax_num_cpu_devices", 4)
  assert parallel.initialize_distributed()
  mesh = parallel.create_mesh()
  assert jax.process_count() == 2 and mesh.size == 8
  rows = parallel.process_batch_size(BATCH_SIZE, mesh)
  start = jax.process_index() * rows
  local = [{"x": b["x"][start:start + rows]} for b in global_batches()]
  losses, params, _ = run(mesh, local)
  if jax.process_index() == 0:
    np.savez(out_path, losses=losses, **params)


if __name__ == "__main__":
  _worker(sys.argv[1])
