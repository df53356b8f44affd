"""The diffusion task: a denoiser trained on `config.data`, sampled with `config.sample`."""

import jax

from diffax.pipeline import build
from diffax.pipeline import images
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.workdir import Workdir


class DiffusionTask:
  """Trains `config.model` to denoise `config.data` examples (optionally conditioned on their
  labels) and draws sample grids from its EMA params."""

  def __init__(self, config):
    self.config = config
    self.schedule = build.schedule(config)
    self.model = build.model(config)
    self.loss_fn = build.loss_fn(config, self.model, self.schedule)
    self._request = None

  def loss_batch(self, host_batch: dict) -> dict:
    """`{"image", "label"}` from the data -> `{"x", "cond"}` of the loss."""
    batch = {"x": host_batch["image"]}
    if "label" in self.model.cond_keys:
      batch["cond"] = {"label": host_batch["label"]}
    return batch

  def check_sampling(self) -> None:
    """Builds the sampler of the training grids now, so that a bad `config.sample` value fails
    before anything compiles; likewise `config.eval` when evaluation is on."""
    self.sample_request(mesh=None)
    if self.config.eval.every:
      from diffax.pipeline import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel
      evaluate.check_config(self.config)

  def evaluator(self, workdir: Workdir, mesh):
    """`evaluate(step, ema_params) -> scalars` of `config.eval` (`evaluate.TrainingEvaluator`;
    it trains the feature classifier first if it must), or None when `config.eval.every` is 0.
    """
    if not self.config.eval.every:
      return None
    from diffax.pipeline import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    return evaluate.TrainingEvaluator(self.config, workdir, mesh, self.model, self.schedule)

  def sample_request(self, mesh) -> sample_lib.Request:
    s = self.config.sample
    if self._request is None or self._request.mesh is not mesh:
      self._request = sample_lib.request(self.config, self.model, self.schedule,
                                         num_images=s.num_images, batch_size=s.batch_size,
                                         mesh=mesh)
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
      num_classes = self.config.model.num_classes
      ncols = num_classes if num_classes and self.config.sample.class_label == -1 else None
      images.save_samples(path, samples, ncols=ncols)
    return path
