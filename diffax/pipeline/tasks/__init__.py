"""What a stage trains. `config.task` names one; `create(config)` builds it.

A task is what varies between the stages of a system (a diffusion model, an autoencoder, an
embedding model, a prior): its network, its loss, how a data batch becomes the loss's batch, and
what it shows during training. Everything else of a run (data, devices, the step, EMA,
checkpoints, exact resume, preemption, logging) is `train.train_and_evaluate`'s, the same for
every task. Building a task (`cls(config)`) checks its config and reads nothing large. A task
has:

  init_fn(rng) -> params        what the run trains (the train state holds it, and its EMA)
  loss_fn(params, batch, rng) -> (loss, aux)
  check()                       further checks before anything compiles (e.g. the sampler)
  prepare(workdir, mesh) -> config    loads frozen parts (a latent model's autoencoder) and
                                resolves settings; returns the config the run saves
  device_batch(host_batch, step, mesh) -> batch   the data batch of training step `step`
                                (host numpy) -> the loss's batch on the devices (sharded)
  frozen, preprocess            parameters the task uses but does not train (a latent model's
                                autoencoder; None if none) and `preprocess(frozen, batch, rng)`,
                                run on each micro-batch inside the step (`step.make_train_step`)
  write_samples(workdir, step, params, mesh) -> path or None   pictures of progress (EMA
                                params), process 0
  evaluator(workdir, mesh) -> None or evaluate(step, params) -> scalars   (config.eval)

Tasks: "diffusion" (pixel or latent diffusion: `config.latent`), "autoencoder" (the first
stage of a latent model), "classifier" (the evaluation's feature network), "contrastive" (a
CLIP image tower aligned to the frozen text encoder: unCLIP's embedding), "prior" (unCLIP's
diffusion prior: text embedding -> image embedding, diffusion on `[B, D]` vectors).
"""

from diffax.pipeline.tasks import autoencoder
from diffax.pipeline.tasks import classifier
from diffax.pipeline.tasks import contrastive
from diffax.pipeline.tasks import diffusion
from diffax.pipeline.tasks import prior

# config.task -> the task class, built as cls(config).
TASKS = {"diffusion": diffusion.DiffusionTask, "autoencoder": autoencoder.AutoencoderTask,
         "classifier": classifier.ClassifierTask,
         "contrastive": contrastive.ContrastiveTask, "prior": prior.PriorTask}


def create(config):
  """The task named by `config.task`, built from the config (its values checked)."""
  name = config.get("task", "diffusion")
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is unknown; choose one of {sorted(TASKS)}")
  return TASKS[name](config)
