"""`train_and_evaluate(config, workdir)`: one stage of training, config in, workdir out.

config -> checks -> the task (network, loss, sampler; `prepare` loads what it uses frozen,
e.g. a latent model's autoencoder) -> data iterator (host numpy) -> `task.device_batch` ->
jitted, data-parallel `step(state, batch, rng, frozen)` -> `TrainLog`
(progress bar, metrics.jsonl, TensorBoard) -> Orbax checkpoints every `checkpoint_every` steps
-> sample grids from the EMA params every `sample_every` steps -> the task's evaluation
every `config.eval.every` steps (`evaluate`: metrics.jsonl, TensorBoard and eval/).

A run resumes from the newest intact checkpoint in `workdir`. Its data order and randomness are
functions of the step, so a resumed run logs the same losses as an uninterrupted one.

At scale: several processes (TPU pod hosts, GPU hosts) each run this same function; each reads
its own shard of the data and feeds its devices' part of the global batch, process 0 alone
writes logs, samples and the config, and all of them write checkpoints together (Orbax). On
SIGTERM or SIGINT (to any process) the run saves a checkpoint at a step every process agrees on
and returns normally, so a preempted job exits 0 and its restart resumes. Faults end the run
with a message that names them: a dead peer process (JAX's heartbeat, `config.distributed`),
a failed checkpoint write (`checkpoint.CheckpointSaveError`; the previous checkpoint stays
usable), a non-finite loss (`errors.NonFiniteLossError`, or `config.train.nonfinite = "skip"`
to drop such updates and count them as `skipped_steps`).
"""

import time

import jax

from diffax import models
from diffax.pipeline import checkpoint
from diffax.pipeline import checks
from diffax.pipeline import compilation_cache
from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import saved_step
from diffax.pipeline import state as state_lib
from diffax.pipeline import step as step_lib
from diffax.pipeline import tasks
from diffax.pipeline.errors import NonFiniteLossError  # pylint: disable=unused-import
from diffax.pipeline.train_log import TrainLog, report
from diffax.pipeline.workdir import Workdir

# config.model.dtype for training: models.DTYPES without float16, which would need loss scaling.
COMPUTE_DTYPES = ("float32", "bfloat16")


def initialize_distributed(config) -> bool:
  """Joins the multi-host runtime as `config.distributed` (or the environment) says."""
  d = config.distributed
  return parallel.initialize_distributed(
      d.coordinator_address, d.num_processes, d.process_id, cluster=d.cluster,
      initialization_timeout=d.initialization_timeout, heartbeat_timeout=d.heartbeat_timeout)


def check_loop_options(config, mesh) -> None:
  """The training loop's own settings: intervals, dtype, and the batch against the devices."""
  t = config.train
  for field in ("num_steps", "log_every", "checkpoint_every"):
    if isinstance(t[field], bool) or not isinstance(t[field], int) or t[field] < 1:
      raise ValueError(f"config.train.{field} must be an int >= 1, got {t[field]!r}")
  for field in ("sample_every", "max_steps_ahead"):
    if isinstance(t[field], bool) or not isinstance(t[field], int) or t[field] < 0:
      raise ValueError(f"config.train.{field} must be an int >= 0, got {t[field]!r}")
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype={config.model.dtype!r} cannot train; choose one of "
                     f"{list(COMPUTE_DTYPES)}")
  k = t.grad_accum_steps
  step_lib.check_options(t.nonfinite, k)
  parallel.check_batch_size(t.batch_size, mesh)
  if t.batch_size % (k * mesh.size):
    raise ValueError(
        f"config.train.batch_size={t.batch_size} must be a multiple of "
        f"config.train.grad_accum_steps={k} times the {mesh.size} device(s), so that every "
        f"micro-batch splits evenly over the devices; choose e.g. "
        f"{max(1, t.batch_size // (k * mesh.size)) * k * mesh.size}.")


def rngs(seed: int):
  """The run's independent keys: parameter init and training steps (samples use a third)."""
  base = jax.random.key(seed)
  return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)


def train_and_evaluate(config, workdir):
  """Trains (or resumes training) the task of `config`, writing everything to `workdir`.

  Args:
    config: a diffax config (see configs/); checked before anything compiles or is written.
    workdir: a path or `Workdir`: checkpoints, metrics.jsonl, TensorBoard logs, sample grids
      and the resolved config go there. A workdir with checkpoints resumes from the newest
      intact one.

  Returns:
    The final `TrainState`: at `config.train.num_steps`, or earlier when SIGTERM/SIGINT stopped
    the run (after saving a checkpoint at the returned state's step).

  Raises:
    ValueError: an invalid config, named field first; nothing in the workdir was changed.
    errors.NonFiniteLossError: the loss became NaN/inf (with `config.train.nonfinite = "stop"`);
      the newest checkpoint predates it.
    checkpoint.CheckpointSaveError: a checkpoint could not be written; the previous one is
      intact.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
  checks.check(config)
  initialize_distributed(config)
  compilation_cache.enable()
  mesh = parallel.create_mesh(fsdp=config.parallel.fsdp)
  check_loop_options(config, mesh)
  task = tasks.create(config)
  task.check()
  # Imported here, after every check: it loads TensorFlow (seconds), which a config error
  # should not wait for.
  from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  open_batches = lambda step: data.create_iterator(
      config, start_step=step, process_index=jax.process_index(),
      process_count=jax.process_count())
  tx, lr_schedule = optim.create_optimizer(config)
  init_rng, train_rng = rngs(config.seed)
  create = lambda rng: state_lib.create_train_state(task.init_fn, tx, rng)
  start_step = checkpoint.latest_step_in(workdir.checkpoints) or 0
  batches = open_batches(start_step)  # opens (and checks) the data before anything is written
  config = task.prepare(workdir, mesh)  # e.g. a latent model's autoencoder and scale factor
  # Sample quality every config.eval.every steps (None when off); may train the feature
  # classifier first, so it runs before this run's progress bar.
  evaluate = task.evaluator(workdir, mesh) if start_step < config.train.num_steps else None
  if jax.process_index() == 0:
    workdir.save_config(config)
  ckpt = checkpoint.from_config(config, workdir)

  # The target's shardings place a checkpoint saved on other devices, hosts or meshes on these.
  target = parallel.abstract_state(create, mesh, init_rng)
  # The step always drops a non-finite update (the state stays finite and one program serves
  # both modes); config.train.nonfinite decides in TrainLog whether the run then stops.
  # Frozen parameters (a latent model's autoencoder) are the step's last argument.
  step_fn = step_lib.make_train_step(task.loss_fn, tx, config, lr_schedule, skip_nonfinite=True,
                                    preprocess=task.preprocess)
  train_rng = parallel.replicate(train_rng, mesh)
  state = ckpt.restore_or_init(lambda: parallel.create_sharded_state(create, mesh, init_rng),
                               target=target)
  if int(state.step) != start_step:  # the newest checkpoint was corrupt: an older one restored
    start_step = int(state.step)
    batches = open_batches(start_step)
  num_steps = config.train.num_steps
  t = config.train
  fsdp = mesh.shape[parallel.FSDP_AXIS]
  report(f"{'resuming' if start_step else 'starting'} {workdir} at step {start_step} of "
         f"{num_steps}: {models.count_params(state.params):,} parameters, {mesh.size} "
         f"device(s) in {jax.process_count()} process(es)"
         + (f", state sharded over {fsdp} (FSDP)" if fsdp > 1 else "")
         + f", batch {t.batch_size} "
         f"({t.batch_size // jax.process_count()} per process"
         + (f", {t.grad_accum_steps} micro-batches" if t.grad_accum_steps > 1 else "")
         + f"), {config.model.dtype} compute")

  batch = None
  if start_step < num_steps:
    batch = task.device_batch(next(batches), start_step, mesh)
    # Traced once per config: a resumed run loads the saved step (and XLA's cached executable).
    step_fn = saved_step.compile_train_step(step_fn, mesh, state, batch, train_rng, task.frozen,
                                            key=config.to_json_best_effort(sort_keys=True)
                                            + saved_step.code_fingerprint(task.loss_fn,
                                                                          task.preprocess))
  log = TrainLog(workdir, start_step=start_step, num_steps=num_steps, batch_size=t.batch_size,
                 skip_nonfinite=t.nonfinite == "skip", max_ahead=t.max_steps_ahead,
                 latest_checkpoint=ckpt.latest_step)
  preemption = parallel.PreemptionGuard()
  stopped_at = None
  try:
    with preemption:
      for step in range(start_step, num_steps):
        if step > start_step:  # the first batch was read to compile the step
          batch = task.device_batch(next(batches), step, mesh)
        state, metrics = step_fn(state, batch, train_rng, task.frozen)
        done = step + 1
        log.add(done, metrics)  # waits until at most max_steps_ahead steps are unfinished
        stop = preemption.stop_requested(done)  # the same step on every process
        is_last = done == num_steps
        if done % t.log_every == 0 or is_last or stop:
          log.write(done)
        if done % t.checkpoint_every == 0 or is_last or stop:
          ckpt.save(done, state)
        if stop:
          stopped_at = done
          break
        if is_last or (t.sample_every and done % t.sample_every == 0):
          path = task.write_samples(workdir, done, state.ema_params, mesh)
          if path:
            report(f"step {done}: samples in {path}")
        if evaluate is not None and (is_last or done % config.eval.every == 0):
          log.write_scalars(done, evaluate(done, state.ema_params))
  finally:
    log.close()
    ckpt.close()  # waits for an async save in flight: a finished run leaves complete checkpoints
  if stopped_at is not None:
    after = time.monotonic() - preemption.signal_time
    report(f"{preemption.signal_name}: stopped at step {stopped_at} of {num_steps}, "
           f"{after:.1f} s after the signal, with checkpoint {stopped_at} saved; run the same "
           f"command again to resume", every_process=True)
  return state
