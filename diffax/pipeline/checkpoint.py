"""Checkpoints of the train state with Orbax: save (async), keep the last K, resume safely.

Completeness. Orbax 0.12.8 writes a step into `<step>.orbax-checkpoint-tmp`, writes
`commit_success.txt` into it when every file is written, and only then renames it to `<step>`
(on GCS, where renames are not atomic, it writes into `<step>` and the commit file alone marks
completion). A save killed midway therefore leaves either a tmp directory, which Orbax never
lists as a step (and this module deletes on start-up), or, on object stores, a step directory
without the commit file, which this module also skips. A step counts as complete only when
Orbax lists it *and* it holds the commit file.

Failed saves. A save that fails midway (a full disk, a lost mount) leaves at most an
uncommitted tmp directory, so the previous checkpoint stays the newest complete one. The failure,
which an async save reports only when the next save starts or when the manager waits, is raised
as `CheckpointSaveError` naming the step that failed and the step a restart will resume from.

Corruption. A complete-looking checkpoint can still be damaged later (a truncated or garbled
file, a deleted one). `restore_or_init` tries the newest checkpoint first and, when it fails to
restore, logs a warning naming its path and the error and falls back to the next older one.
Checkpoints it had to skip are moved aside to `<step>.corrupt-<time>` (renamed, never deleted),
so that new saves at those steps are not refused and do not count against `keep`. When
checkpoints exist but none restores, it raises `CorruptCheckpointError` instead of silently
training from scratch over them.
"""

import contextlib
import os
import time
from typing import Any, Callable, Optional, Union

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import state as state_lib

PyTree = Any

# Written by Orbax 0.12.8 into every step directory as the last act of a save, before the
# atomic rename (local disks) or as the sole completion marker (object stores).
COMMIT_FILE = "commit_success.txt"


class CorruptCheckpointError(ValueError):
  """Checkpoints exist but none of them can be restored."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed (a full disk, lost permissions, ...); older ones are intact."""


_array_handler_configured = False


def _configure_array_handler() -> None:
  """Turns off Orbax's replica-parallel saving on CPU; once per process.

  Replica-parallel saving slices every replicated array across its replicas so that each device
  copies a part to the host. On CPU the "devices" share the host's memory, so the split buys
  nothing, and each slice is an eager op compiled on the first save: with 8 devices the first
  save of even a tiny model took 7.3 s instead of 0.1 s, which a preemption grace period pays.
  (Orbax already turns it off on GPU; TPU keeps Orbax's default.)
  """
  global _array_handler_configured
  if _array_handler_configured or jax.default_backend() != "cpu":
    return
  _array_handler_configured = True
  with _orbax_errors_hidden():  # Orbax warns that it replaces its default handler
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


@contextlib.contextmanager
def _orbax_errors_hidden():
  """Hides what Orbax logs itself: its errors when it reads a damaged checkpoint (on opening
  the directory and on restoring; `restore_or_init` reports each failure once, with what it
  does about it), and its warning when `_configure_array_handler` replaces a default."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _abstract(leaf):
  """A restore target leaf: shape, dtype and sharding, no data."""
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return leaf
  return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None))


class Checkpointer:
  """Saves and restores `TrainState`s in `directory`, one subdirectory per step.

  Example::

    ckpt = Checkpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints)
    state = ckpt.restore_or_init(lambda: parallel.create_sharded_state(create, mesh, rng))
    ...
    ckpt.save(step, state)      # returns once the arrays are copied off the devices
    ...
    ckpt.close()                # waits for the last save to be written

  Every process of a multi-host run must make the same calls.
  """

  def __init__(self, directory: Union[str, os.PathLike], *, keep: int = 3,
               async_save: bool = True):
    """Opens (creating if needed) a checkpoint directory.

    Args:
      directory: where the step directories live, e.g. `workdir/checkpoints`.
      keep: how many of the newest checkpoints to keep (`config.train.keep_checkpoints`).
      async_save: write checkpoints in a background thread; `save` then returns once the
        arrays are on the host, and `wait_until_finished`/`close` wait for the write.
    """
    if keep < 1:
      raise ValueError(f"config.train.keep_checkpoints must be >= 1, got {keep}")
    _configure_array_handler()
    directory = os.fspath(directory)
    if "://" not in directory:  # Orbax 0.12.8 refuses to save under a relative path
      directory = os.path.abspath(directory)
    self.directory = epath.Path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        # Tmp directories are what a killed save leaves behind; nobody else writes here.
        cleanup_tmp_directories=True,
    )
    with _orbax_errors_hidden():  # it reads every step's metadata; restore reports damage
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending_step: Optional[int] = None  # the step of the newest save started
    self._failed_step: Optional[int] = None   # the step whose save failed, once reported

  def _is_committed(self, step: int) -> bool:
    return (self.directory / str(step) / COMMIT_FILE).exists()

  def all_steps(self) -> list[int]:
    """The steps of every complete checkpoint, ascending (restorable or not)."""
    return sorted(s for s in self._manager.all_steps() if self._is_committed(s))

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or None."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves `state` as checkpoint `step`, then deletes all but the newest `keep`.

    The state may be donated to the next train step as soon as this returns.

    Args:
      step: the step number (normally `int(state.step)`).
      state: the train state.
      force: save even if Orbax's policy would skip this step.

    Returns:
      False if a checkpoint at `step` or later already exists (nothing is written), else True.

    Raises:
      CheckpointSaveError: this save, or the previous (async) one, failed to write.
    """
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Orbax first waits for the previous async save, whose error would surface here.
      previous = self._pending_step
      failed = previous if previous is not None and not self._is_committed(previous) else step
      raise self._save_error(failed, e) from e
    if saved:
      self._pending_step = step
    return saved

  def _save_error(self, step: Optional[int], error: Exception) -> CheckpointSaveError:
    self._failed_step = step
    latest = self.latest_step()
    if latest is None:
      previous = "There is no older complete checkpoint."
    else:
      previous = (f"The newest complete checkpoint, {self.directory / str(latest)}, is intact: "
                  "a restart resumes from it (free disk space or fix the directory first).")
    return CheckpointSaveError(f"saving checkpoint {self.directory / str(step)} failed: "
                               f"{type(error).__name__}: {error}. {previous}")

  def restore(self, target: PyTree, step: Optional[int] = None) -> PyTree:
    """Restores checkpoint `step` (default: the newest) into the structure of `target`.

    Args:
      target: a pytree like the saved one whose leaves are arrays or `jax.ShapeDtypeStruct`s;
        their shardings say where the restored arrays go (replicated for the train state).
      step: which checkpoint; None for the newest complete one.

    Returns:
      The restored pytree. Errors from a damaged checkpoint propagate.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    abstract = jax.tree.map(_abstract, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_or_init(self, init: Union[Callable[[], PyTree], PyTree], *,
                      target: Optional[PyTree] = None) -> PyTree:
    """Resumes from the newest checkpoint that restores, or initializes when there is none.

    Args:
      init: either a function `() -> state`, run only when there is no checkpoint, or a
        state / pytree of `jax.ShapeDtypeStruct`s to return when there is none.
      target: the restore target: `jax.ShapeDtypeStruct`s whose shardings say where the
        restored arrays go (`diffax.pipeline.parallel.abstract_state`). Default: `init` itself, or
        `jax.eval_shape(init)` for a function, which carries no shardings, so each array goes
        where it was when saved; that fails when the devices differ from the saving run's
        (another number of devices or hosts). Give it to resume on any topology.

    Returns:
      The restored state, or the initial one.

    Raises:
      CorruptCheckpointError: checkpoints exist but none restores; the message lists each
        checkpoint's path and error.
    """
    if target is None:
      target = jax.eval_shape(init) if callable(init) else init
    listed = sorted(self._manager.all_steps())
    broken = []  # (step, reason) of each checkpoint skipped, newest first
    for step in reversed(listed):
      path = self.directory / str(step)
      if not self._is_committed(step):
        broken.append((step, f"no {COMMIT_FILE}: the save did not finish"))
        continue
      try:
        with _orbax_errors_hidden():  # reported below, in one warning or one error
          state = self.restore(target, step)
      except Exception as e:  # pylint: disable=broad-exception-caught
        # Damage surfaces as many types (ValueError from TensorStore, JSONDecodeError,
        # OSError, ...); every one of them means: this checkpoint cannot be used.
        broken.append((step, f"{type(e).__name__}: {e}"))
        continue
      for bad, reason in broken:
        logging.warning("checkpoint %s (step %d) cannot be restored (%s); resuming from the "
                        "older checkpoint %s", self.directory / str(bad), bad, reason, path)
      if broken:
        self._move_aside([s for s, _ in broken])
      logging.info("restored checkpoint %s (step %d)", path, step)
      return state

    if broken:
      details = "\n".join(f"  {self.directory / str(s)}: {r}" for s, r in broken)
      raise CorruptCheckpointError(
          f"{self.directory} holds {len(broken)} checkpoint(s) but none can be restored "
          f"(damaged, or saved from a different model/optimizer config); refusing to start "
          f"training from scratch over them. Repair or remove them, or choose another "
          f"workdir.\n{details}")
    logging.info("no checkpoint in %s; initializing", self.directory)
    return init() if callable(init) else init

  def _move_aside(self, steps: list[int]) -> None:
    """Renames unusable step directories so Orbax no longer lists them."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if ocp.multihost.is_primary_host(0):
      for step in steps:
        src = self.directory / str(step)
        dst = self.directory / f"{step}.corrupt-{stamp}"
        src.rename(dst)
        logging.warning("moved unusable checkpoint %s aside to %s", src, dst)
    # The barrier name must be the same on every process (so not the clock) and unique.
    ocp.multihost.sync_global_processes(
        "diffax_checkpoint_move_aside_" + "_".join(map(str, steps)))
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until every pending save is completely written.

    Raises:
      CheckpointSaveError: a pending save failed to write.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise self._save_error(self._pending_step, e) from e

  def close(self) -> None:
    """Waits for pending saves and releases the manager.

    Raises:
      CheckpointSaveError: a pending save failed to write (and was not reported before).
    """
    reported = self._failed_step is not None
    try:
      self.wait_until_finished()
    except CheckpointSaveError:
      if not reported:
        raise
    finally:
      try:
        self._manager.close()
      except Exception as e:  # pylint: disable=broad-exception-caught
        if self._failed_step is None:
          raise self._save_error(self._pending_step, e) from e
        # The failed save again, reported by another of Orbax's threads.
        logging.warning("closing the checkpoints in %s after the failed save of step %s: %s",
                        self.directory, self._failed_step, e)

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def steps_in(directory) -> list[int]:
  """The steps of the complete checkpoints in `directory`, ascending, looked up without
  opening (or creating) anything."""
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / COMMIT_FILE).exists())


def latest_step_in(directory) -> Optional[int]:
  """The newest complete checkpoint's step in `directory`; None when there is none."""
  return max(steps_in(directory), default=None)


def load_ema_params(workdir, config, init_fn: Callable, *, mesh=None,
                    step: Optional[int] = None):
  """The EMA params of a training run's checkpoint (the newest, or `step`), and its step.

  Args:
    workdir: the run directory (a `workdir.Workdir`).
    config: its config (`workdir.load_config()`).
    init_fn: `init_fn(rng) -> params` of what the run trained (its task's), for the shapes.
    mesh: where to place the params (default: every device), replicated.
    step: the checkpoint to read; None for the newest that restores.

  Returns:
    `(ema_params, step)`.

  Raises:
    FileNotFoundError: no checkpoint in the workdir, or none at `step`.
  """
  steps = steps_in(workdir.checkpoints)
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {workdir.checkpoints}: train first, or check "
                            "--workdir")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir.checkpoints} (it holds "
                            f"{steps})")
  mesh = parallel.create_mesh() if mesh is None else mesh
  tx, _ = optim.create_optimizer(config)
  create = lambda rng: state_lib.create_train_state(init_fn, tx, rng)
  target = parallel.abstract_state(create, mesh, jax.random.key(0))
  with from_config(config, workdir) as ckpt:
    state = ckpt.restore_or_init(target) if step is None else ckpt.restore(target, step)
  return state.ema_params, int(state.step)


def from_config(config, workdir) -> Checkpointer:
  """The run's checkpointer: the workdir's checkpoints, keeping `config.train.keep_checkpoints`.

  Args:
    config: the run config.
    workdir: a `workdir.Workdir` (or its path).
  """
  from diffax.pipeline.workdir import Workdir  # pylint: disable=g-import-not-at-top
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  return Checkpointer(workdir.checkpoints, keep=config.train.keep_checkpoints)
