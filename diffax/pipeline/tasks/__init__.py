"""What a stage trains. `config.task` names one; `create(config)` builds it.

A task is what varies between the stages of a system (a diffusion model, an autoencoder, an
embedding model, a prior): its network, its loss, how a data batch becomes the loss's batch, and
what it shows during training. Everything else of a run (data, devices, the step, EMA,
checkpoints, exact resume, preemption, logging) is `train.train_and_evaluate`'s, the same for
every task. A task has:

  model                   the network (`diffax.models.Model`)
  loss_fn(params, batch, rng) -> (loss, aux)
  loss_batch(host_batch) -> batch      a data batch (host numpy) -> the loss's batch
  write_samples(workdir, step, params, mesh)   pictures of progress (EMA params), process 0
  evaluator(workdir, mesh) -> None or evaluate(step, params) -> scalars   (config.eval)
"""

from diffax.pipeline.tasks import classifier
from diffax.pipeline.tasks import diffusion

# config.task -> the task class, built as cls(config).
TASKS = {"diffusion": diffusion.DiffusionTask, "classifier": classifier.ClassifierTask}


def create(config):
  """The task named by `config.task`, built from the config (its values checked)."""
  name = config.get("task", "diffusion")
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is unknown; choose one of {sorted(TASKS)}")
  return TASKS[name](config)
