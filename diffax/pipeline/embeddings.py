"""A trained contrastive stage (`config.task = "contrastive"`), loaded for later stages.

unCLIP's prior and decoder read the embeddings of one contrastive run: its image tower embeds
images (the prior's data, the decoder's condition, the input of variations) and its locked text
tower embeds captions and prompts (the prior's condition). Both are unit-norm `[N, D]`.

  clip = embeddings.load("workdirs/digits_clip")
  img = clip.embed_images(images)     # f32[N, D] (numpy)
  txt = clip.embed_texts(["a handwritten 7"])
"""

import os
from typing import Optional

import jax
import numpy as np

from diffax.pipeline import checkpoint
from diffax.pipeline import parallel
from diffax.pipeline.tasks import contrastive as contrastive_task
from diffax.pipeline.workdir import Workdir


class Contrastive:
  """The EMA params of a contrastive run, as image and text embedders.

  Attributes:
    workdir: the run directory.
    config: its saved config.
    step: the checkpoint the params come from.
    tower: its `diffax.models.image_encoder.ImageEncoder`.
    params: the trained params, `{"image", "log_scale"}`, replicated over the mesh.
    embedding_dim: D.
    image_shape: the images it takes, (H, W, C).
  """

  def __init__(self, workdir: Workdir, config, params, step: int, mesh):
    self.workdir, self.config, self.params, self.step, self.mesh = (workdir, config, params,
                                                                    step, mesh)
    self.tower = contrastive_task.network(config)
    self.embedding_dim = self.tower.embedding_dim
    self.image_shape = self.tower.sample_shape
    self._embed = jax.jit(self.tower.apply_fn)
    self._text = None

  @property
  def text(self):
    """The locked text tower (`text.FrozenTextEncoder`), loaded on first use."""
    if self._text is None:
      self._text = contrastive_task.load_text_encoder(self.config)
    return self._text

  def check_images(self, images: np.ndarray, what: str = "images") -> np.ndarray:
    """`images` as f32 `[N, H, W, C]`, or a one-line ValueError naming the shape it takes."""
    images = np.asarray(images, np.float32)
    images = images[None] if images.ndim == len(self.image_shape) else images
    if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
      h, w, c = self.image_shape
      raise ValueError(f"{what} of shape {tuple(images.shape)}: the image tower of {self.workdir} "
                       f"takes {h}x{w} images with {c} channel(s) ([N, {h}, {w}, {c}])")
    return images

  def embed_images(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """`f32[N, D]` unit-norm embeddings of `[N, H, W, C]` images in [-1, 1]."""
    images = self.check_images(images)
    return np.asarray(parallel.map_batches(self._embed, self.params["image"], images, self.mesh,
                                           batch_size=batch_size), np.float32)

  def embed_texts(self, texts) -> np.ndarray:
    """`f32[N, D]` unit-norm embeddings of texts by the locked text tower."""
    return contrastive_task.text_embeddings(self.text, contrastive_task.decode(texts))


def load(workdir, mesh=None, *, step: Optional[int] = None) -> Contrastive:
  """Loads the contrastive run in `workdir` (its newest checkpoint, or `step`).

  Raises:
    FileNotFoundError: no such run, or no checkpoint.
    ValueError: the run is not a contrastive one.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  config = workdir.load_config()
  if config.get("task") != "contrastive":
    raise ValueError(f"{workdir} holds a config.task={config.get('task')!r} run; unCLIP's "
                     f"stages need a contrastive one (configs/digits_clip.py)")
  mesh = parallel.create_mesh() if mesh is None else mesh
  task = contrastive_task.ContrastiveTask(config)
  params, step = checkpoint.load_ema_params(workdir, config, task.init_fn, mesh=mesh, step=step)
  return Contrastive(workdir, config, params, step, mesh)
