"""The diffusion task: a denoiser trained on `config.data`, sampled with `config.sample`.

What conditions it (labels, captions through the frozen text encoder, the low-res image of a
super-resolution stage) is `conditions.Conditioner`'s, from the keys the model reads.
"""

import jax

from diffax.pipeline import build
from diffax.pipeline import conditions
from diffax.pipeline import images
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.workdir import Workdir


class DiffusionTask:
  """Trains `config.model` to denoise `config.data` examples (optionally conditioned on their
  labels, captions or low-res versions) and draws sample grids from its EMA params."""

  def __init__(self, config):
    self.config = config
    self.schedule = build.schedule(config)
    self.model = build.model(config)
    self.loss_fn = build.loss_fn(config, self.model, self.schedule)
    self.conditioner = conditions.Conditioner(config, self.model)
    self._request = None

  def loss_batch(self, host_batch: dict) -> dict:
    """`{"image", "label"[, "caption"]}` from the data -> `{"x", "cond"}` of the loss."""
    batch = {"x": host_batch["image"]}
    cond = self.conditioner.training(host_batch)
    if cond is not None:
      batch["cond"] = cond
    return batch

  def check_sampling(self) -> None:
    """Builds the sampler of the training grids now, so that a bad `config.sample` value fails
    before anything compiles."""
    self.sample_request(mesh=None)

  def _grid_low_res(self):
    """A super-resolution model's grid inputs: the first images of the data, downsampled."""
    if self.conditioner.factor is None:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    s = self.config.sample
    images_ = data.load_eval_images(self.config, s.num_images)["image"]
    return conditions.downsample(images_, self.conditioner.factor)

  def sample_request(self, mesh) -> sample_lib.Request:
    s = self.config.sample
    if self._request is None or self._request.mesh is not mesh:
      self._request = sample_lib.request(
          self.config, self.model, self.schedule, num_images=s.num_images,
          batch_size=s.batch_size, mesh=mesh, low_res=self._grid_low_res(),
          low_res_rng=sample_lib.low_res_rng(self.config.seed), conditioner=self.conditioner)
    return self._request

  def sample_rng(self, step: int) -> jax.Array:
    """The key of the grid drawn at `step`: derived from the seed and the step alone."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), 2), step)

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> str:
    """Draws the grid of step `step` from `params` (the EMA params); process 0 writes it.

    Returns:
      The PNG path.
    """
    rng = parallel.replicate(self.sample_rng(step), mesh)
    samples = self.sample_request(mesh)(params, rng)
    path = workdir.sample_grid(step)
    if jax.process_index() == 0:
      images.save_samples(path, samples,
                          **sample_lib.grid_layout(self.config, len(samples)))
    return path
