"""The compiled train step, saved whole: a resumed run skips tracing as well as XLA.

JAX's persistent compilation cache skips XLA's compile, but it is keyed by the lowered program,
so every new process traces and lowers the step first: seconds of Python for a U-Net, most of a
warm start. `compile_train_step` saves the traced step with `jax.export` (StableHLO, with its
shardings) beside that cache, keyed by the config, the arguments' shapes and shardings, the
devices, the versions of jax, jaxlib, flax, optax and numpy, and a hash of diffax's own sources. The next process with the
same key loads it instead of tracing, and its compile is a cache hit.

The key names everything the step is traced from when the step is built from the config, as
`diffax.pipeline.train` builds it (a latent model's scale factor is in the config `prepare`
returns), plus the names and bytecode of the task's loss and preprocessing functions
(`code_fingerprint`), so a loss wrapped or patched from Python is a new key. Other Python
changes that neither the config nor those show (a value a wrapper closes over) need a key that
names them, or `directory=None`. Anything that keeps the step from being exported (a custom call
outside `jax.export`'s stable set) falls back to tracing it, with a log line.
"""

import functools
import hashlib
import importlib.metadata
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
from jax.sharding import Mesh

from diffax.pipeline import compilation_cache, parallel

SUBDIR = "diffax_train_steps"
_DIFFAX_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=1)
def sources_digest() -> str:
  """sha256 over diffax's Python sources (paths and bytes): a changed module is a new key."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(_DIFFAX_ROOT):
    dirs.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        digest.update(os.path.relpath(path, _DIFFAX_ROOT).encode())
        with open(path, "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()


def code_fingerprint(*fns: Callable) -> str:
  """Names and bytecode of the Python functions a step is built from (`functools.partial`s
  unwrapped; None skipped): a key part that changes when one of them is replaced, e.g. a task's
  loss wrapped or patched from Python, which the config does not show."""
  parts = []
  for fn in fns:
    while isinstance(fn, functools.partial):
      fn = fn.func
    if fn is None:
      continue
    code = getattr(fn, "__code__", None)
    parts.append(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn))}:"
                 + (hashlib.sha256(code.co_code + repr(code.co_names).encode()).hexdigest()
                    if code is not None else ""))
  return "\n".join(parts)


def _describe(leaf) -> str:
  sharding = getattr(leaf, "sharding", None)
  spec = getattr(sharding, "spec", sharding)
  return f"{leaf.dtype}{list(leaf.shape)}@{spec}"


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
  """Versions of the libraries that tracing the step runs through."""
  return tuple(f"{name} {importlib.metadata.version(name)}"
               for name in ("jax", "jaxlib", "flax", "optax", "numpy"))


def step_key(key: str, mesh: Mesh, args: tuple) -> str:
  """The file name's digest: `key`, the arguments' tree, shapes, dtypes and shardings, the mesh
  and its devices, the versions of the libraries tracing runs through and diffax's sources."""
  leaves, tree = jax.tree.flatten(args)
  parts = [key, str(tree), *map(_describe, leaves),
           str(dict(mesh.shape)), mesh.devices.flat[0].device_kind, str(mesh.size),
           *_versions(), sources_digest()]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _export(step_fn: Callable, mesh: Mesh, args: tuple) -> "jax.export.Exported":
  """Exports `step_fn(state, batch, rng, frozen)` over flat leaves (jax.export serializes plain
  containers and arrays, not a TrainState or a typed PRNG key), with each leaf's sharding."""
  state, batch, rng, frozen = args
  leaves, tree = jax.tree.flatten((state, batch, frozen))
  impl = jax.random.key_impl(rng)

  def flat(rng_data, *leaves):
    state, batch, frozen = jax.tree.unflatten(tree, leaves)
    new_state, metrics = step_fn(state, batch, jax.random.wrap_key_data(rng_data, impl=impl),
                                 frozen)
    return jax.tree.leaves(new_state), metrics

  # The shardings `parallel.compile_train_step` gives the step it wraps.
  repl = parallel.replicated(mesh)
  state_shardings = jax.tree.leaves(parallel.state_sharding(mesh, state))
  shardings = (state_shardings + [parallel.batch_sharding(mesh)] * len(jax.tree.leaves(batch))
               + [repl] * len(jax.tree.leaves(frozen)))
  jitted = jax.jit(flat, in_shardings=(repl, *shardings), out_shardings=(state_shardings, repl))
  rng_data = jax.random.key_data(rng)
  return jax.export.export(jitted)(
      jax.ShapeDtypeStruct(rng_data.shape, rng_data.dtype, sharding=repl),
      *(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s) for x, s in zip(leaves, shardings)))


def _call_exported(exported: "jax.export.Exported", state_tree) -> Callable:
  def step(state, batch, rng, frozen):
    leaves = jax.tree.leaves((state, batch, frozen))
    state_leaves, metrics = exported.call(jax.random.key_data(rng), *leaves)
    return jax.tree.unflatten(state_tree, state_leaves), metrics
  return step


def compile_train_step(step_fn: Callable, mesh: Mesh, state: Any, batch: Any, rng: jax.Array,
                       frozen: Any, *, key: str, name: str = "train_step",
                       directory: Optional[str] = "cache") -> Callable:
  """`parallel.compile_now(parallel.compile_train_step(...))`, loading the traced step from disk
  when a run with the same key saved it, and saving it otherwise.

  Args:
    step_fn: `step(state, batch, rng, frozen) -> (state, metrics)`, as
      `diffax.pipeline.step.make_train_step` builds it.
    mesh: the device mesh.
    state, batch, rng, frozen: the step's arguments, placed with their shardings (`rng` a
      concrete typed key).
    key: names how `step_fn` was built, e.g. the run's config as JSON.
    name: the file name's prefix and the compile barrier's name.
    directory: where saved steps live; "cache": the persistent compilation cache's directory
      (none when that cache is off); None: trace every time.

  Returns:
    The compiled step; call it as `step(state, batch, rng, frozen)`, the state donated.
  """
  args = (state, batch, rng, frozen)
  jitted = lambda fn: parallel.compile_train_step(fn, mesh, state, frozen=True)
  if directory == "cache":
    directory = compilation_cache.directory()
  if directory is None or jax.process_count() > 1:
    return parallel.compile_now(jitted(step_fn), *args, name=name)
  path = os.path.join(directory, SUBDIR, f"{name}-{step_key(key, mesh, args)}.jaxexport")
  state_tree = jax.tree.structure(state)
  exported = _load(path)
  if exported is not None:
    try:
      return parallel.compile_now(jitted(_call_exported(exported, state_tree)), *args, name=name)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("diffax: the saved train step %s does not fit this run (%s: %s); tracing "
                      "it again", path, type(e).__name__, e)
  try:
    data = _export(step_fn, mesh, args).serialize()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("diffax: tracing the train step every run: it cannot be saved with "
                    "jax.export (%s: %s)", type(e).__name__, e)
    return parallel.compile_now(jitted(step_fn), *args, name=name)
  _save(path, data)
  # The loaded form, not the traced one, so that this run and the next lower the same module
  # and the next one's XLA compile is a persistent-cache hit.
  exported = jax.export.deserialize(data)
  return parallel.compile_now(jitted(_call_exported(exported, state_tree)), *args, name=name)


def _load(path: str) -> Optional["jax.export.Exported"]:
  if not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      return jax.export.deserialize(bytearray(f.read()))
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("diffax: ignoring the unreadable saved train step %s (%s); tracing it again",
                    path, e)
    return None


def _save(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)
