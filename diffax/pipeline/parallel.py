"""Devices and processes: the mesh, shardings, batch placement, compiling the step, multi-host
start-up, and stopping every process at the same step on preemption.

This is the only module that knows about devices. Parallelism is `jax.jit` over a 2-D mesh with
axes ('data', 'fsdp'): the global batch is split along its first axis over every device
(`P(('data', 'fsdp'))`), and the train state is replicated over 'data' and, when the 'fsdp' axis
is larger than 1, sharded over it (ZeRO-3 / fully sharded data parallelism: each large
parameter and its optimizer state is split along one dimension, so a device holds 1/fsdp of
them; XLA gathers the parameters for the computation and reduce-scatters the gradients). With
fsdp = 1 this is plain data parallelism, the pmap programming model written as the JAX docs now
recommend. The same code runs on one CPU, eight GPUs or a TPU pod, and gives the same numbers
up to float rounding whatever the mesh.

Multi-host: every process runs the same program, loads its own slice of the global batch as
numpy, and `shard_batch` assembles the global `jax.Array` from the slices.
"""

import os
import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

# Leaves with fewer elements stay replicated under FSDP: biases and norms cost nothing to keep
# whole, and gathering them would cost a collective each.
FSDP_MIN_SIZE = 2**12


def create_mesh(devices: Optional[Sequence[jax.Device]] = None, *, fsdp: int = 1) -> Mesh:
  """A 2-D mesh ('data', 'fsdp') over `devices` (default: every device of every process).

  Args:
    devices: the devices, in the order JAX lists them (processes contiguous).
    fsdp: the size of the 'fsdp' axis, which parameters and optimizer state are sharded over;
      it must divide the number of devices. 1: plain data parallelism.

  The axes are `AxisType.Auto`: shardings are given at the jit boundary and XLA propagates them
  through the step.
  """
  devices = jax.devices() if devices is None else list(devices)
  if isinstance(fsdp, bool) or not isinstance(fsdp, int) or fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f"config.parallel.fsdp={fsdp!r} must be a positive divisor of the "
                     f"{len(devices)} device(s)")
  return jax.make_mesh((len(devices) // fsdp, fsdp), BATCH_AXES, (AxisType.Auto,) * 2,
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (the rng, the metrics, small state leaves)."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of batch arrays: split along the leading (batch) axis over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def leaf_sharding(mesh: Mesh, shape) -> NamedSharding:
  """The sharding of one state leaf: replicated, or (FSDP) split over 'fsdp' along its largest
  dimension that the axis divides, when the leaf has at least FSDP_MIN_SIZE elements."""
  fsdp = mesh.shape[FSDP_AXIS]
  size = int(np.prod(shape)) if len(shape) else 1
  if fsdp == 1 or size < FSDP_MIN_SIZE:
    return replicated(mesh)
  dims = sorted((d for d in range(len(shape)) if shape[d] % fsdp == 0),
                key=lambda d: -shape[d])
  if not dims:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[dims[0]] = FSDP_AXIS
  return NamedSharding(mesh, P(*spec))


def state_sharding(mesh: Mesh, tree: Any) -> Any:
  """The shardings of a train state (a pytree of arrays or `jax.ShapeDtypeStruct`s)."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, x.shape), tree)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  """Fails early, with the numbers, when the global batch cannot be split evenly.

  Args:
    global_batch: `config.train.batch_size`, summed over every device of every process.
    mesh: the device mesh.

  Raises:
    ValueError: if `global_batch` is not a positive multiple of the device count.
  """
  num_devices = mesh.size
  if global_batch <= 0 or global_batch % num_devices:
    raise ValueError(
        f"config.train.batch_size={global_batch} must be a positive multiple of the number of "
        f"devices ({num_devices}: {jax.process_count()} process(es) x "
        f"{num_devices // jax.process_count()} device(s)); choose e.g. "
        f"{max(1, global_batch // num_devices) * num_devices}.")


def process_batch_size(global_batch: int, mesh: Mesh) -> int:
  """The share of the global batch that this process loads (its devices' share)."""
  check_batch_size(global_batch, mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return global_batch // mesh.size * local_devices


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Assembles the global, sharded batch from this process's numpy slice.

  With one process the slice is the whole batch. With several, each process passes its
  `process_batch_size` rows, which become the rows of the global batch held by its devices
  (with the usual device order: the global batch is the processes' slices in process order).

  Args:
    host_batch: a pytree (e.g. `{"image": [b, H, W, C], "label": [b]}`) of numpy arrays,
      `b` = this process's share of the global batch.
    mesh: the device mesh.

  Returns:
    The same pytree of global `jax.Array`s, `[B, ...]`, sharded `P('data')`.
  """
  sharding = batch_sharding(mesh)
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)

  def place(x):
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[0] % local_devices:
      raise ValueError(
          f"a batch array of shape {x.shape} cannot be split over this process's "
          f"{local_devices} device(s): its leading (batch) axis must be a multiple of it")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(place, host_batch)


def shard_padded(host_array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds whole, as a global `jax.Array` sharded over 'data'
  (each process places only its devices' rows), its leading axis padded to a multiple of the
  device count by repeating the last row. Callers drop the padding from the result."""
  x = np.asarray(host_array)
  pad = -len(x) % mesh.size
  if pad:
    x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
  return jax.make_array_from_callback(x.shape, batch_sharding(mesh), lambda index: x[index])


def map_batches(fn: Callable, params: Any, host_array: np.ndarray, mesh: Mesh, *,
                batch_size: int) -> Any:
  """`fn(params, batch)` over `host_array` in batches of `batch_size`, each split over the
  mesh (`shard_padded`); the outputs (a pytree of `[B, ...]` arrays; None leaves stay None)
  gathered to the host and concatenated, padding dropped."""
  outs = []
  for start in range(0, len(host_array), batch_size):
    chunk = host_array[start:start + batch_size]
    out = fn(params, shard_padded(chunk, mesh))
    outs.append(jax.tree.map(lambda a, n=len(chunk): to_host(a)[:n], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outs)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree (e.g. the base rng), identical on every process, on every device.

  Unlike `jax.device_put`, this also works when the mesh spans several processes: each
  process supplies its (identical) copy for its own devices.
  """
  sharding = replicated(mesh)

  def put(x):
    x = x if isinstance(x, jax.Array) else np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)

  return jax.tree.map(put, tree)


def create_sharded_state(create_fn: Callable[..., Any], mesh: Mesh, *args) -> Any:
  """Creates the train state directly on the devices, in its `state_sharding`.

  Jitting the initializer with the output shardings materializes every parameter where it
  lives (each device only its shards) without a detour through host memory or device 0.

  Args:
    create_fn: e.g. `functools.partial(train_state.create_train_state, init_fn, tx)`.
    mesh: the device mesh.
    *args: the arguments of `create_fn` (e.g. the init rng).

  Returns:
    `create_fn(*args)`, every leaf placed by `state_sharding`.
  """
  shardings = state_sharding(mesh, jax.eval_shape(create_fn, *args))
  return jax.jit(create_fn, out_shardings=shardings)(*args)


def abstract_state(create_fn: Callable[..., Any], mesh: Mesh, *args) -> Any:
  """Shapes, dtypes and shardings (`state_sharding`) of `create_fn(*args)`, without computing
  it: the restore target of a checkpoint, which Orbax places in those shardings whatever the
  mesh the checkpoint was saved from (replicated <-> FSDP, other device counts).
  """
  shapes = jax.eval_shape(create_fn, *args)
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=leaf_sharding(mesh, s.shape)),
      shapes)


def compile_train_step(step_fn: Callable, mesh: Mesh, state: Any = None, *,
                       frozen: bool = False) -> Callable:
  """Jits `step_fn(state, batch, rng) -> (state, metrics)` for `mesh`.

  The state keeps its `state_sharding` (replicated, or FSDP-sharded), the batch is sharded over
  every device, the rng and metrics are replicated. The input state is donated: its buffers are
  reused for the new state, so a step needs memory for one state, not two. Do not use a state
  after passing it in.

  Args:
    step_fn: the pure step from `diffax.pipeline.step.make_train_step`.
    mesh: the device mesh.
    state: the train state or its abstract shapes, to shard it; None: replicated (only right
      when the mesh's 'fsdp' axis is 1).
    frozen: the step takes a fourth argument, the frozen parameters (replicated; None when
      there are none): `step(state, batch, rng, frozen)`.

  Returns:
    The jitted step.
  """
  repl = replicated(mesh)
  states = repl if state is None else state_sharding(mesh, state)
  return jax.jit(
      step_fn,
      in_shardings=(states, batch_sharding(mesh), repl) + ((repl,) if frozen else ()),
      out_shardings=(states, repl),
      donate_argnums=(0,),
  )


def sync_processes(name: str, *, timeout_s: int = 1800) -> None:
  """Waits until every process has called `sync_processes(name)`; a no-op with one process.

  A barrier of the distributed runtime (coordination service), not a device collective, so
  it may wait for as long as `timeout_s`. Collectives may not: on CPU, gloo gives up when the
  processes reach a new collective more than 30 s apart.

  Args:
    name: the barrier's name, the same on every process and used once.
    timeout_s: how long to wait for the others before failing.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # pylint: disable=g-import-not-at-top
  multihost.get_barrier_sync_fn()(key=f"diffax_{name}", timeout_ms=timeout_s * 1000)


def compile_now(jitted: Callable, *args, name: str) -> Callable:
  """Compiles `jitted` for `args` at once, then waits until every process has compiled it.

  Processes of a multi-host run compile at different speeds: JAX's persistent cache serves
  process 0 alone (only it writes entries; on CPU the other processes' keys differ), so process
  0 can reach the step's first collective minutes ahead, longer than CPU collectives wait.
  Compiling up front and meeting at a barrier removes that skew.

  Args:
    jitted: a `jax.jit`-wrapped function, e.g. from `compile_train_step`.
    *args: example arguments (arrays with their shardings, or `jax.ShapeDtypeStruct`s).
    name: names the barrier (unique per call).

  Returns:
    The compiled function; call it with arguments shaped and sharded like `args`.
  """
  compiled = jitted.lower(*args).compile()
  sync_processes(f"compiled_{name}")
  return compiled


def initialize_distributed(
    coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None,
    *,
    cluster: str = "",
    initialization_timeout: int = 300,
    heartbeat_timeout: int = 100,
) -> bool:
  """Joins JAX's distributed runtime when this process is one of several; else does nothing.

  Call it first, before anything touches a device. The runtime is started when
  - the arguments are given, or the environment sets `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (any launcher, e.g. several GPU hosts); or
  - `cluster="auto"` or `DIFFAX_DISTRIBUTED=1`: JAX detects the cluster itself (Cloud TPU pods,
    Slurm, Open MPI).
  Otherwise the run is single-process and nothing happens.

  The runtime watches every process: one that sends no heartbeat for `heartbeat_timeout`
  seconds (killed, crashed, its host gone) counts as dead, and every other process then exits
  (SIGABRT) with "Terminating process because the JAX distributed service detected fatal
  errors. This most likely indicates that another task died", instead of waiting forever in
  the next collective. It also starts JAX's preemption service (see `PreemptionGuard`).

  Args:
    coordinator_address: `host:port` of process 0.
    num_processes: the number of processes.
    process_id: this process's index in `[0, num_processes)`.
    cluster: "" (use the arguments / environment) or "auto" (let JAX detect the cluster).
    initialization_timeout: seconds to wait for every process to join before failing.
    heartbeat_timeout: seconds without a heartbeat after which a process counts as dead.

  Returns:
    True if the distributed runtime is (now) initialized.
  """
  if cluster not in ("", "auto"):
    raise ValueError(f"unknown config.distributed.cluster {cluster!r}; choose one of "
                     "['', 'auto']")
  for name, value in (("initialization_timeout", initialization_timeout),
                      ("heartbeat_timeout", heartbeat_timeout)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"config.distributed.{name} must be an int >= 1 (seconds), got "
                       f"{value!r}")
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and env.get("JAX_NUM_PROCESSES"):
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and env.get("JAX_PROCESS_ID"):
    process_id = int(env["JAX_PROCESS_ID"])
  auto = cluster == "auto" or env.get("DIFFAX_DISTRIBUTED", "").lower() in ("1", "true", "auto")
  explicit = (coordinator_address, num_processes, process_id)
  if not auto and all(v is None for v in explicit):
    return False
  if not auto and any(v is None for v in explicit):
    raise ValueError(
        "multi-host needs all of coordinator_address, num_processes and process_id (config."
        "distributed.*, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), got "
        f"{coordinator_address!r}, {num_processes!r}, {process_id!r}; or set "
        "config.distributed.cluster=auto (or DIFFAX_DISTRIBUTED=1) to let JAX detect a TPU "
        "pod / Slurm / Open MPI cluster")
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=initialization_timeout,
                             heartbeat_timeout_seconds=heartbeat_timeout)
  logging.info("distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


class PreemptionGuard:
  """Turns SIGTERM and SIGINT into "stop at a step boundary that every process agrees on".

  Example::

    with parallel.PreemptionGuard() as guard:
      for step in range(start, num_steps):
        state = train_step(state, ...)
        if guard.stop_requested(step + 1):   # same answer on every process
          checkpointer.save(step + 1, state)
          break

  One process: handlers for SIGTERM and SIGINT record the signal, and `stop_requested` is True
  from the next step boundary on. It costs a Python attribute read per step.

  Several processes: a scheduler may signal only some of them (one preempted host), and they
  must still all stop at the same step, or the collectives of the others would hang. JAX's
  preemption service (started by `jax.distributed.initialize`) owns SIGTERM there: it passes
  the notice to every process, and `multihost_utils.reached_preemption_sync_point` turns True on
  all of them at the same step (one past the largest step any process had reached). Checking
  it is a local flag read until a notice arrives. SIGINT is forwarded to it as SIGTERM.

  In both cases a second SIGINT raises KeyboardInterrupt at once (when the save itself hangs).
  Handlers are installed only from the main thread and restored on exit.
  """

  def __init__(self):
    self.signal_name: Optional[str] = None  # the signal this process received, if any
    self.signal_time: Optional[float] = None  # time.monotonic() when it arrived (or was heard)
    self._multiprocess = jax.process_count() > 1
    self._previous = {}
    self._stop = False
    self._no_service = False

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop without waiting for the step
    self.signal_name = name
    self.signal_time = time.monotonic()
    logging.warning("%s received: saving a checkpoint at the next step boundary and stopping",
                    name)
    if self._multiprocess and signum != signal.SIGTERM:
      os.kill(os.getpid(), signal.SIGTERM)  # tell JAX's preemption service, hence every process

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("not in the main thread: SIGTERM/SIGINT will not stop training cleanly")
      return self
    # With several processes, JAX's preemption service has a C-level SIGTERM handler that a
    # Python one would replace.
    signums = [signal.SIGINT] if self._multiprocess else [signal.SIGTERM, signal.SIGINT]
    for signum in signums:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def stop_requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (call it after every step, same steps everywhere).

    Args:
      step: the number of steps taken so far (`state.step`); increasing by one per call.

    Returns:
      True, on every process at the same `step`, once a stop was requested; it stays True.
    """
    if self._stop:
      return True
    if not self._multiprocess:
      self._stop = self.signal_name is not None
      return self._stop
    if self._no_service:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      self._stop = multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError as e:  # jax_enable_preemption_service is off
      logging.warning("no preemption service (%s): SIGTERM will not stop training cleanly", e)
      self._no_service = True
      return False
    if self._stop and self.signal_name is None:
      self.signal_name = "a preemption notice (SIGTERM)"
      self.signal_time = time.monotonic()
    return self._stop


def to_host(x: Any) -> Any:
  """The full value of a (possibly sharded, possibly multi-host) array pytree, as numpy.

  With one process this is `jax.device_get`; with several, every process receives the whole
  array (an all-gather), so any of them can write it out.
  """
  if jax.process_count() == 1:
    return jax.device_get(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils.process_allgather(x, tiled=True)
