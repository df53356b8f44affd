"""`train_and_evaluate(config, workdir)`: the one module that wires a training run together.

config -> data iterator (host numpy) -> `parallel.shard_batch` -> jitted, data-parallel
`step(state, batch, rng)` -> metrics (console progress bar, metrics.jsonl, TensorBoard) ->
Orbax checkpoints every `checkpoint_every` steps -> EMA samples every `sample_every` steps.

A run resumes from the newest intact checkpoint in `workdir`. Its data order and randomness are
functions of the step, so a resumed run logs the same losses as an uninterrupted one.
"""

import operator
import os
import time

from absl import logging
import jax
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


def report(message: str) -> None:
  """Prints a line above the progress bar (process 0 only) and logs it."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


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
    The final `TrainState`.

  Raises:
    ValueError: an invalid config, named field first.
    NonFiniteLossError: the loss became NaN/inf; the newest checkpoint predates it.
  """
  validation.validate_config(config)
  enable_compilation_cache()
  parallel.initialize_distributed()
  mesh = parallel.create_mesh()
  local_batch = parallel.process_batch_size(config.train.batch_size, mesh)
  is_chief = jax.process_index() == 0
  if is_chief:
    generate.save_config(config, workdir)

  schedule = schedules.from_config(config.diffusion)
  init_fn, apply_fn = models.create(config)
  tx, lr_schedule = optim.create_optimizer(config)
  loss_fn = losses.from_config(apply_fn, schedule, config)
  step_fn = parallel.compile_train_step(
      train_step_lib.make_train_step(loss_fn, tx, config, lr_schedule), mesh)
  init_rng, train_rng, sample_rng = rngs(config.seed)
  train_rng = parallel.replicate(train_rng, mesh)

  ckpt = checkpoint.from_config(config, workdir)
  create = lambda: parallel.create_sharded_state(
      lambda rng: train_state_lib.create_train_state(init_fn, tx, rng), mesh, init_rng)
  state = ckpt.restore_or_init(create)
  start_step = int(state.step)
  num_steps = config.train.num_steps
  report(f"{'resuming' if start_step else 'starting'} {workdir} at step {start_step} of "
         f"{num_steps}: {models.count_params(state.params):,} parameters, {mesh.size} "
         f"device(s), batch {config.train.batch_size} ({local_batch} per process)")

  sample_fn = generate.make_sample_fn(apply_fn, schedule, config, mesh=mesh,
                                      batch_size=config.sample.batch_size)  # compiled on first use

  def save_samples(step):
    images = generate.generate(sample_fn, state.ema_params, config.sample.num_images,
                               config.sample.batch_size, jax.random.fold_in(sample_rng, step),
                               progress=False)
    if is_chief:
      path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
      image_grid.save_samples(path, images)
      report(f"step {step}: samples in {path}")

  batches = data.create_iterator(config, start_step=start_step,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
  writer = metric_writer.MetricWriter(workdir, start_step=start_step) if is_chief else None
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc="training", unit="step",
                       disable=not is_chief, dynamic_ncols=True)
  summed, summed_steps, interval_start = None, 0, time.perf_counter()
  try:
    for step in range(start_step, num_steps):
      batch = parallel.shard_batch(next(batches), mesh)
      state, metrics = step_fn(state, batch, train_rng)
      # Metrics stay on device and are summed there; the host reads them only when it logs.
      summed = metrics if summed is None else jax.tree.map(operator.add, summed, metrics)
      summed_steps += 1
      done = step + 1
      progress.update(1)

      is_last = done == num_steps
      log_now = done % config.train.log_every == 0 or is_last
      save_now = done % config.train.checkpoint_every == 0 or is_last
      if log_now or save_now:
        scalars = {k: float(v) / summed_steps for k, v in jax.device_get(summed).items()}
        nonfinite_steps = round(scalars.pop("nonfinite") * summed_steps)
        if nonfinite_steps:
          raise NonFiniteLossError(
              f"non-finite loss or gradient in the {summed_steps} step(s) up to step {done} "
              f"(loss {scalars['loss']}); stopping without saving this state. Newest "
              f"checkpoint: step {ckpt.latest_step()}. Lower config.optim.learning_rate or "
              f"check the data.")
        elapsed = time.perf_counter() - interval_start
        scalars["steps_per_sec"] = summed_steps / elapsed
        scalars["images_per_sec"] = summed_steps * config.train.batch_size / elapsed
        if writer is not None:
          writer.write(done, scalars)
        progress.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
        summed, summed_steps, interval_start = None, 0, time.perf_counter()
      if save_now:
        ckpt.save(done, state)
      if is_last or (config.train.sample_every and done % config.train.sample_every == 0):
        save_samples(done)
  finally:
    progress.close()
    ckpt.close()  # waits for an async save in flight: a finished run leaves complete checkpoints
    if writer is not None:
      writer.close()
  return state
