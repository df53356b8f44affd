"""`train_and_evaluate(config, workdir)`: the one module that wires a training run together.

config -> data iterator (host numpy) -> `parallel.shard_batch` -> jitted, data-parallel
`step(state, batch, rng)` -> metrics (console progress bar, metrics.jsonl, TensorBoard) ->
Orbax checkpoints every `checkpoint_every` steps -> EMA samples every `sample_every` steps.

A run resumes from the newest intact checkpoint in `workdir`. Its data order and randomness are
functions of the step, so a resumed run logs the same losses as an uninterrupted one.

At scale: several processes (TPU pod hosts, GPU hosts) each run this same function; each reads
its own shard of the data and feeds its devices' part of the global batch, process 0 alone
writes logs, samples and the config, and all of them write checkpoints together (Orbax). On
SIGTERM or SIGINT (to any process) the run saves a checkpoint at a step every process agrees on
and returns normally, so a preempted job exits 0 and its restart resumes. Faults end the run
with a message that names them: a dead peer process (JAX's heartbeat, `config.distributed`),
a failed checkpoint write (`checkpoint.CheckpointSaveError`; the previous checkpoint stays
usable), a non-finite loss (`NonFiniteLossError`, or `config.train.nonfinite = "skip"` to drop
such updates and count them as `skipped_steps`).
"""

import operator
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import tqdm

from diffax import checkpoint
from diffax import data
from diffax import generate
from diffax import image_grid
from diffax import losses
from diffax import metric_writer
from diffax import models
from diffax import optim
from diffax import parallel
from diffax import schedules
from diffax import train_state as train_state_lib
from diffax import train_step as train_step_lib
from diffax import validation

DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "diffax", "jax_compilation_cache")


# config.model.dtype for training: models.DTYPES without float16, which would need loss scaling.
COMPUTE_DTYPES = ("float32", "bfloat16")


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/inf loss or gradient; nothing of that state was saved."""


def enable_compilation_cache() -> None:
  """Turns on JAX's persistent compilation cache, so a second run does not compile again.

  `$DIFFAX_COMPILATION_CACHE` picks the directory ("" turns the cache off); a cache directory
  already set in JAX's own config (e.g. `$JAX_COMPILATION_CACHE_DIR`) is left alone.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  path = os.environ.get("DIFFAX_COMPILATION_CACHE", DEFAULT_COMPILATION_CACHE)
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


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


def initialize_distributed(config) -> bool:
  """Joins the multi-host runtime as `config.distributed` (or the environment) says."""
  d = config.distributed
  return parallel.initialize_distributed(
      d.coordinator_address, d.num_processes, d.process_id, cluster=d.cluster,
      initialization_timeout=d.initialization_timeout, heartbeat_timeout=d.heartbeat_timeout)


def check_scale_options(config, mesh) -> None:
  """Fails early on a bad `model.dtype`, `train.nonfinite` or `train.grad_accum_steps`."""
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"unknown config.model.dtype {config.model.dtype!r}; choose one of "
                     f"{list(COMPUTE_DTYPES)}")
  k = config.train.grad_accum_steps
  train_step_lib.check_options(config.train.nonfinite, k)
  if config.train.batch_size % (k * mesh.size):
    raise ValueError(
        f"config.train.batch_size={config.train.batch_size} must be a multiple of "
        f"config.train.grad_accum_steps={k} times the {mesh.size} device(s), so that every "
        f"micro-batch splits evenly over the devices; choose e.g. "
        f"{max(1, config.train.batch_size // (k * mesh.size)) * k * mesh.size}.")


def sum_metrics(summed, metrics):
  """Adds one step's metrics to the running sums; a skipped (non-finite) step adds only to
  `nonfinite`, so the sums average over the applied updates."""
  skipped = metrics["nonfinite"] > 0
  added = {k: v if k == "nonfinite" else jnp.where(skipped, 0.0, v)
           for k, v in metrics.items()}
  return added if summed is None else jax.tree.map(operator.add, summed, added)


def rngs(seed: int):
  """The run's three independent keys: parameter init, training steps, samples."""
  base = jax.random.key(seed)
  return (jax.random.fold_in(base, 0), jax.random.fold_in(base, 1),
          jax.random.fold_in(base, 2))


def train_and_evaluate(config, workdir: str):
  """Trains (or resumes training) the model of `config`, writing everything to `workdir`.

  Args:
    config: a diffax config (see configs/); validated before anything compiles.
    workdir: where checkpoints, metrics.jsonl, TensorBoard logs, sample grids and the resolved
      config go. A workdir with checkpoints resumes from the newest intact one.

  Returns:
    The final `TrainState`: at `config.train.num_steps`, or earlier when SIGTERM/SIGINT stopped
    the run (after saving a checkpoint at the returned state's step).

  Raises:
    ValueError: an invalid config, named field first.
    NonFiniteLossError: the loss became NaN/inf (with `config.train.nonfinite = "stop"`); the
      newest checkpoint predates it.
    checkpoint.CheckpointSaveError: a checkpoint could not be written; the previous one is
      intact.
  """
  validation.validate_config(config)
  enable_compilation_cache()
  initialize_distributed(config)
  mesh = parallel.create_mesh()
  local_batch = parallel.process_batch_size(config.train.batch_size, mesh)
  check_scale_options(config, mesh)
  is_chief = jax.process_index() == 0
  if is_chief:
    generate.save_config(config, workdir)

  schedule = schedules.from_config(config.diffusion)
  init_fn, apply_fn = models.create(config)
  tx, lr_schedule = optim.create_optimizer(config)
  loss_fn = losses.from_config(apply_fn, schedule, config)
  # The step always drops a non-finite update (the state stays finite and one program serves
  # both modes); config.train.nonfinite decides below whether the run then stops or goes on.
  step_fn = parallel.compile_train_step(
      train_step_lib.make_train_step(loss_fn, tx, config, lr_schedule, skip_nonfinite=True),
      mesh)
  accumulate = jax.jit(sum_metrics, donate_argnums=0)
  init_rng, train_rng, sample_rng = rngs(config.seed)
  train_rng = parallel.replicate(train_rng, mesh)

  ckpt = checkpoint.from_config(config, workdir)
  create = lambda rng: train_state_lib.create_train_state(init_fn, tx, rng)
  # The target's shardings place a checkpoint saved on other devices or hosts on these ones.
  state = ckpt.restore_or_init(lambda: parallel.create_sharded_state(create, mesh, init_rng),
                               target=parallel.abstract_state(create, mesh, init_rng))
  start_step = int(state.step)
  num_steps = config.train.num_steps
  skip_nonfinite = config.train.nonfinite == "skip"
  accum = config.train.grad_accum_steps
  report(f"{'resuming' if start_step else 'starting'} {workdir} at step {start_step} of "
         f"{num_steps}: {models.count_params(state.params):,} parameters, {mesh.size} "
         f"device(s) in {jax.process_count()} process(es), batch {config.train.batch_size} "
         f"({local_batch} per process"
         + (f", {accum} micro-batches of {config.train.batch_size // accum}" if accum > 1 else "")
         + f"), {config.model.dtype} compute")

  sample_fn = generate.make_sample_fn(apply_fn, schedule, config, mesh=mesh,
                                      batch_size=config.sample.batch_size)  # compiled on first use

  def save_samples(step):
    rng = parallel.replicate(jax.random.fold_in(sample_rng, step), mesh)  # one key, every process
    images = generate.generate(sample_fn, state.ema_params, config.sample.num_images,
                               config.sample.batch_size, rng, progress=False)
    if is_chief:
      path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
      image_grid.save_samples(path, images)
      report(f"step {step}: samples in {path}")

  batches = data.create_iterator(config, start_step=start_step,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  batch = None
  if start_step < num_steps:
    batch = parallel.shard_batch(next(batches), mesh)
    step_fn = parallel.compile_now(step_fn, state, batch, train_rng, name="train_step")
  writer = metric_writer.MetricWriter(workdir, start_step=start_step) if is_chief else None
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc="training", unit="step",
                       disable=not is_chief, dynamic_ncols=True)
  summed, summed_steps, interval_start = None, 0, time.perf_counter()
  try:
    with parallel.PreemptionGuard() as preemption:
      for step in range(start_step, num_steps):
        if step > start_step:  # the first batch was read to compile the step
          batch = parallel.shard_batch(next(batches), mesh)
        state, metrics = step_fn(state, batch, train_rng)
        # Metrics stay on device and are summed there; the host reads them only when it logs.
        summed = accumulate(summed, metrics)
        summed_steps += 1
        done = step + 1
        progress.update(1)

        stop = preemption.stop_requested(done)  # the same step on every process
        is_last = done == num_steps
        log_now = done % config.train.log_every == 0 or is_last or stop
        save_now = done % config.train.checkpoint_every == 0 or is_last or stop
        if log_now or save_now:
          sums = {k: float(v) for k, v in jax.device_get(summed).items()}
          nonfinite_steps = round(sums.pop("nonfinite"))
          if nonfinite_steps and not skip_nonfinite:
            raise NonFiniteLossError(
                f"non-finite loss or gradient in {nonfinite_steps} of the {summed_steps} "
                f"step(s) up to step {done}; stopping without saving this state. Newest "
                f"checkpoint: step {ckpt.latest_step()}. Lower config.optim.learning_rate, "
                f"check the data, or set config.train.nonfinite=skip to drop such updates.")
          applied = summed_steps - nonfinite_steps
          scalars = {k: v / applied if applied else float("nan") for k, v in sums.items()}
          if skip_nonfinite:
            scalars["skipped_steps"] = nonfinite_steps
            if nonfinite_steps:
              report(f"step {done}: skipped {nonfinite_steps} of {summed_steps} update(s) "
                     f"with a non-finite loss or gradient")
          elapsed = time.perf_counter() - interval_start
          scalars["steps_per_sec"] = summed_steps / elapsed
          scalars["images_per_sec"] = summed_steps * config.train.batch_size / elapsed
          if writer is not None:
            writer.write(done, scalars)
          progress.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
          summed, summed_steps, interval_start = None, 0, time.perf_counter()
        if save_now:
          ckpt.save(done, state)
        if stop:
          report(f"{preemption.signal_name}: stopped at step {done} of {num_steps} after "
                 f"saving checkpoint {done}; run the same command again to resume",
                 every_process=True)
          break
        if is_last or (config.train.sample_every and done % config.train.sample_every == 0):
          save_samples(done)
  finally:
    progress.close()
    if writer is not None:
      writer.close()
    ckpt.close()  # waits for an async save in flight: a finished run leaves complete checkpoints
  return state
