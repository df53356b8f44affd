"""The diffusion task: a denoiser trained on `config.data`, sampled with `config.sample`.

In pixel space by default. With `config.latent.autoencoder_workdir` set it is latent diffusion
(`diffax.pipeline.latent`): the network is built for the autoencoder's latents, the frozen
autoencoder's params are the step's `frozen` argument and its `preprocess` encodes each
micro-batch inside the step, and the sample grids are decoded to pixels (their .npz holds the
latents too). Conditioning, guidance and the loss are the same either way. What conditions it
(labels, captions through the frozen text encoder, the low-res image of a super-resolution
stage, the image embedding of an unCLIP decoder) is `conditions.Conditioner`'s, from the keys
the model reads.
"""

import jax

from diffax.pipeline import build
from diffax.pipeline import conditions
from diffax.pipeline import kinds
from diffax.pipeline import latent
from diffax.pipeline import media
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir


class DiffusionTask:
  """Trains `config.model` to denoise `config.data` examples (images, video or audio clips,
  optionally conditioned on their labels, captions or low-res versions), or their latents, and
  draws samples from its EMA params."""

  def __init__(self, config):
    self.config = config
    self.schedule = build.schedule(config)
    self.latent_shape = latent.latent_shape(config) if latent.enabled(config) else None
    self.model = build_model(config, self.latent_shape)
    self.init_fn = self.model.init_fn
    self.loss_fn = build.loss_fn(config, self.model, self.schedule)
    self.conditioner = conditions.Conditioner(config, self.model)
    self.kind = kinds.kind(config.data)
    self.latent_space = None  # the frozen autoencoder, loaded by `prepare`
    self.frozen = None        # its params: the train step's frozen argument
    self.preprocess = None    # images -> latents inside the step
    self._request = None

  def loss_batch(self, host_batch: dict) -> dict:
    """`{kind, "label"[, "caption"]}` from the data (kind "image", "video" or "audio") ->
    `{"x", "cond"}` of the loss (host arrays)."""
    batch = {"x": host_batch[self.kind]}
    cond = self.conditioner.training(host_batch)
    if cond is not None:
      batch["cond"] = cond
    return batch

  def device_batch(self, host_batch: dict, step: int, mesh) -> dict:
    """The loss's batch of training step `step` on the devices (a latent model's images are
    encoded in the step, by `preprocess`)."""
    del step
    return parallel.shard_batch(self.loss_batch(host_batch), mesh)

  def check(self) -> None:
    """Builds the sampler of the training grids now, so that a bad `config.sample` value fails
    before anything compiles; likewise `config.eval` when evaluation is on."""
    self.sample_request(mesh=None)
    if self.config.eval.every and self.conditioner.clip is not None:
      raise ValueError(f"config.eval.every={self.config.eval.every}: the in-training evaluation "
                       f"draws from labels or prompts, not from the image embeddings an unCLIP "
                       f"decoder reads; set it to 0 and judge variations (tests/test_unclip.py)")
    if self.config.eval.every:
      from diffax.pipeline import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel
      evaluate.check_config(self.config, self.model)

  def evaluator(self, workdir: Workdir, mesh):
    """`evaluate(step, ema_params) -> scalars` of `config.eval` (`evaluate.TrainingEvaluator`;
    it trains the feature classifier first if it must), or None when `config.eval.every` is 0.
    """
    if not self.config.eval.every:
      return None
    from diffax.pipeline import evaluate  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    return evaluate.TrainingEvaluator(self.config, workdir, mesh, self.model, self.schedule,
                                      latent_space=self.latent_space)

  def prepare(self, workdir: Workdir, mesh):
    """A latent model loads its frozen autoencoder and resolves its latent settings
    (`latent.resolve`); an unCLIP decoder's contrastive image tower joins the frozen params.
    Returns the config to save (with the latent settings filled in)."""
    if self.latent_shape is not None:
      self.config, self.latent_space = latent.resolve(self.config, workdir, mesh)
      self.frozen, self.preprocess = self.latent_space.params, self.latent_space.preprocess
      self._request = None
      space = self.latent_space
      h, w, z = space.shape
      report(f"latent space: {h}x{w}x{z} latents (f={space.factor}) of the autoencoder "
             f"{space.workdir} at step {space.step}, scale factor {space.scale_factor:.6g}")
    if self.conditioner.clip is not None:  # an unCLIP decoder embeds its images in the step
      self.frozen, self.preprocess = conditions.embed_in_step(self.conditioner.clip,
                                                              self.frozen, self.preprocess)
      report(f"image embeddings: the frozen tower of {self.conditioner.clip.workdir} (step "
             f"{self.conditioner.clip.step})")
    return self.config

  def _grid_low_res(self):
    """A super-resolution model's grid inputs: the first images of the data, downsampled."""
    if self.conditioner.factor is None:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    s = self.config.sample
    images_ = data.load_eval_images(self.config, s.num_images)["image"]
    return conditions.downsample(images_, self.conditioner.factor)

  def _grid_embedding(self):
    """An unCLIP decoder's grid inputs: the embeddings of the first images of the data (the
    grid shows variations of them)."""
    if self.conditioner.clip is None:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    images_ = data.load_eval_images(self.config, self.config.sample.num_images)["image"]
    return self.conditioner.clip.embed_images(images_)

  def sample_request(self, mesh) -> sample_lib.Request:
    s = self.config.sample
    if self._request is None or self._request.mesh is not mesh:
      self._request = sample_lib.request(
          self.config, self.model, self.schedule, num_images=s.num_images,
          batch_size=s.batch_size, mesh=mesh, low_res=self._grid_low_res(),
          low_res_rng=sample_lib.low_res_rng(self.config.seed), conditioner=self.conditioner,
          latent_space=self.latent_space, embedding=self._grid_embedding())
    return self._request

  def sample_rng(self, step: int) -> jax.Array:
    """The key of the grid drawn at `step`: derived from the seed and the step alone."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), 2), step)

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> str:
    """Draws the samples of step `step` from `params` (the EMA params); process 0 writes them:
    a PNG grid (images), frames and a GIF (video), panels and WAV files (audio).

    Returns:
      The PNG path.
    """
    rng = parallel.replicate(self.sample_rng(step), mesh)
    drawn = self.sample_request(mesh).draw(params, rng)
    path = workdir.sample_grid(step)
    if jax.process_index() == 0:
      arrays = {} if drawn.latents is None else {"latents": drawn.latents}
      media.save_samples(path, drawn.images, self.config.data, arrays=arrays,
                         **sample_lib.grid_layout(self.config, len(drawn.images)))
    return path


def build_model(config, latent_shape=None):
  """`build.model` for pixels, or for the latents of shape `latent_shape`; a shape the
  network cannot take is an error that names the latent and where it comes from."""
  if latent_shape is None:
    return build.model(config)
  try:
    return build.model(config, shape=latent_shape)
  except ValueError as e:
    h, w, z = latent_shape
    size = config.data.image_size
    raise ValueError(
        f"{e} (a latent model's network takes the autoencoder's {h}x{w}x{z} latents: "
        f"{size}x{size} images / f={size // h} of config.latent.autoencoder_workdir="
        f"{config.latent.autoencoder_workdir}; choose a channel_mult/attention_resolutions "
        f"for {h}x{w}, or an autoencoder of another f)") from e
