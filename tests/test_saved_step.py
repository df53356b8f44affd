"""The train step saved with jax.export: a second compile with the same key loads it without
tracing, and runs the very same program as the traced step."""

import functools
import json
import os

import jax
import numpy as np
import pytest

from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import saved_step
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import step as train_step_lib
from test_parallel import _Config, global_batches, init_fn, loss_fn

KEY = '{"model": "tiny mlp"}'


class Traces:
  """The loss function, counting how often it is traced."""

  def __init__(self):
    self.count = 0

  def __call__(self, params, batch, rng):
    self.count += 1
    return loss_fn(params, batch, rng)


def _parts(mesh, traces):
  tx, lr_schedule = optim.create_optimizer(_Config)
  create = functools.partial(train_state_lib.create_train_state, init_fn, tx)
  state = parallel.create_sharded_state(create, mesh, jax.random.key(0))
  step_fn = train_step_lib.make_train_step(traces, tx, _Config, lr_schedule)
  batches = [parallel.shard_batch(b, mesh) for b in global_batches()]
  return step_fn, state, batches, parallel.replicate(jax.random.key(1), mesh)


def _train(mesh, directory, traces, key=KEY):
  """Compiles through `saved_step` and trains; returns (losses, params, the first input state)."""
  step_fn, state, batches, rng = _parts(mesh, traces)
  step = saved_step.compile_train_step(step_fn, mesh, state, batches[0], rng, None, key=key,
                                       directory=directory)
  first, losses = state, []
  for batch in batches:
    state, metrics = step(state, batch, rng, None)
    losses.append(np.asarray(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state.params), first, state


def _saved(directory):
  folder = os.path.join(directory, saved_step.SUBDIR)
  return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.fixture
def fsdp_mesh(monkeypatch):
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 1)  # shard every leaf 'fsdp' divides
  return parallel.create_mesh(fsdp=2)


def test_second_compile_loads_the_saved_step_without_tracing(tmp_path, fsdp_mesh):
  traces = Traces()
  losses, params, first, state = _train(fsdp_mesh, str(tmp_path), traces)
  assert traces.count == 1 and len(_saved(str(tmp_path))) == 1
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(first))  # donated
  for leaf, abstract in zip(jax.tree.leaves(state), jax.tree.leaves(
      parallel.state_sharding(fsdp_mesh, state))):
    assert leaf.sharding.is_equivalent_to(abstract, leaf.ndim)  # FSDP shardings kept

  again = Traces()
  losses2, params2, _, _ = _train(fsdp_mesh, str(tmp_path), again)
  assert again.count == 0  # loaded, not traced
  np.testing.assert_array_equal(losses2, losses)
  jax.tree.map(np.testing.assert_array_equal, params2, params)

  # The same numbers as the step jitted directly.
  step_fn, state, batches, rng = _parts(fsdp_mesh, Traces())
  step = parallel.compile_train_step(step_fn, fsdp_mesh, state)
  for batch, loss in zip(batches, losses):
    state, metrics = step(state, batch, rng)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
  assert losses[-1] < losses[0]


def test_a_new_key_or_shape_traces_again_and_none_saves_nothing(tmp_path):
  mesh = parallel.create_mesh(jax.devices()[:2])
  directory = str(tmp_path)
  traces = Traces()
  _train(mesh, directory, traces)
  _train(mesh, directory, traces, key='{"model": "another"}')
  assert traces.count == 2 and len(_saved(directory)) == 2
  _train(parallel.create_mesh(jax.devices()[:4]), directory, traces)  # other devices
  assert traces.count == 3 and len(_saved(directory)) == 3
  _train(mesh, None, traces)
  assert traces.count == 4 and len(_saved(directory)) == 3


def test_an_unreadable_saved_step_is_traced_again(tmp_path, caplog):
  mesh = parallel.create_mesh(jax.devices()[:2])
  directory = str(tmp_path)
  losses, _, _, _ = _train(mesh, directory, Traces())
  (name,) = _saved(directory)
  path = os.path.join(directory, saved_step.SUBDIR, name)
  with open(path, "wb") as f:
    f.write(b"half a file")
  traces = Traces()
  losses2, _, _, _ = _train(mesh, directory, traces)
  assert traces.count == 1 and "unreadable saved train step" in caplog.text
  np.testing.assert_array_equal(losses2, losses)
  assert _saved(directory) == [name] and os.path.getsize(path) > 1000  # saved again, whole


def test_a_saved_step_that_does_not_fit_the_run_is_traced_again(tmp_path, caplog):
  directory = str(tmp_path)
  _train(parallel.create_mesh(jax.devices()[:2]), directory, Traces())
  (two,) = _saved(directory)
  four = parallel.create_mesh(jax.devices()[:4])
  losses, _, _, _ = _train(four, directory, Traces())
  (name,) = set(_saved(directory)) - {two}
  folder = os.path.join(directory, saved_step.SUBDIR)
  os.replace(os.path.join(folder, two), os.path.join(folder, name))  # a 2-device step, as 4's
  traces = Traces()
  losses2, _, _, _ = _train(four, directory, traces)
  assert traces.count == 1 and "does not fit this run" in caplog.text
  np.testing.assert_allclose(losses2, losses, rtol=1e-6)


def test_the_code_fingerprint_names_the_functions():
  fingerprint = saved_step.code_fingerprint
  assert fingerprint(loss_fn) == fingerprint(functools.partial(loss_fn, None), None)
  assert fingerprint(loss_fn) != fingerprint(init_fn)

  def loss_fn_patched(params, batch, rng):  # pylint: disable=unused-argument
    return 0.0, {}
  assert fingerprint(loss_fn) != fingerprint(loss_fn_patched)


def test_a_second_run_of_a_config_loads_the_step_the_first_saved(tmp_path, monkeypatch,
                                                                 tiny_config):
  """Through the training pipeline: the second run traces nothing and trains the same."""
  from diffax.pipeline import compilation_cache  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import tasks  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import train  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(compilation_cache, "directory", lambda: str(tmp_path / "cache"))
  traces, real = [], tasks.create

  def create(config):
    task = real(config)
    loss = task.loss_fn

    def counted_loss(params, batch, rng):
      traces.append(1)
      return loss(params, batch, rng)

    task.loss_fn = counted_loss
    return task

  monkeypatch.setattr(tasks, "create", create)
  config = tiny_config(**{"train.num_steps": 3, "train.sample_every": 0})
  losses = []
  for run in ("a", "b"):
    train.train_and_evaluate(config, str(tmp_path / run))
    losses.append([json.loads(line)["loss"] for line in open(tmp_path / run / "metrics.jsonl")
                   if "loss" in line])
    if run == "a":
      traced = len(traces)
  assert traced >= 1 and len(traces) == traced  # b loaded a's step
  assert len(_saved(str(tmp_path / "cache"))) == 1
  assert len(losses[1]) == 3 and losses[1] == losses[0]
