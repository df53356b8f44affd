"""unCLIP (DALL-E 2) from its trained stages: contrastive embedding, prior, decoder.

  contrastive (configs/digits_clip.py)    images and captions -> unit-norm embeddings [N, D]
  prior       (configs/digits_prior.py)   text embedding -> image embedding (diffusion on [B, D])
  decoder     (configs/digits_unclip_decoder.py)   image embedding -> image (a U-Net reading
                                          cond["embedding"])

Each is a run of `train.train_and_evaluate`; the prior and decoder name the contrastive run's
workdir. This module loads trained runs and chains them: a prompt goes through the prior and
then the decoder; an image's variations are the decoder's samples for its embedding.
"""

import os
from typing import Optional

import jax
import numpy as np

from diffax.pipeline import checkpoint
from diffax.pipeline import embeddings
from diffax.pipeline.tasks import prior as prior_task
from diffax.pipeline.workdir import Workdir


class Prior:
  """A trained prior run: `sample(prompts, rng) -> f32[N, D]` unit-norm image embeddings.

  Attributes:
    workdir, config, step: the run, its saved config and the checkpoint read.
    task: its `tasks.prior.PriorTask` (network, schedule), with the contrastive run loaded.
    params: its EMA params (host).
    clip: the contrastive run (`embeddings.Contrastive`) whose embeddings it generates.
  """

  def __init__(self, workdir: Workdir, config, task, params, step: int):
    self.workdir, self.config, self.task, self.params, self.step = (workdir, config, task,
                                                                    params, step)
    self.clip = task.clip

  def sample(self, prompts, rng: jax.Array, *, guidance_scale: Optional[float] = None,
             num_steps: Optional[int] = None, batch_size: int = 0) -> np.ndarray:
    """One image embedding per prompt, `f32[N, D]`; embedding i depends on rng and i alone."""
    config = self.config
    if num_steps is not None:
      config = config.copy_and_resolve_references()
      with config.unlocked():
        config.sample.num_steps = num_steps
    return prior_task.sample_embeddings(config, self.task.model, self.task.schedule, self.clip,
                                        self.params, list(prompts), rng,
                                        guidance_scale=guidance_scale, batch_size=batch_size)


def load_prior(workdir, mesh=None, *, clip: Optional[embeddings.Contrastive] = None) -> Prior:
  """Loads the prior run in `workdir` and its contrastive run (or `clip`, already loaded).

  Raises:
    ValueError: not a prior run; `clip` is another contrastive run than the prior's.
    FileNotFoundError: no such run, or no checkpoint.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  config = workdir.load_config()
  if config.get("task") != "prior":
    raise ValueError(f"{workdir} holds a config.task={config.get('task')!r} run, not an unCLIP "
                     f"prior (configs/digits_prior.py)")
  task = prior_task.PriorTask(config)
  params, step = checkpoint.load_ema_params(workdir, config, task.init_fn, mesh=mesh)
  task.clip = clip or embeddings.load(config.prior.contrastive_workdir, mesh)
  return Prior(workdir, config, task, jax.device_get(params), step)
