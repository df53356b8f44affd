"""Latent diffusion runs: the frozen autoencoder a diffusion config names, and its latent space.

A run is a stage; a latent diffusion model composes two. `config.latent.autoencoder_workdir`
names a finished `task = "autoencoder"` run. Its saved config gives the latent shape (checked
against `config.data` and the U-Net before anything compiles), and its checkpoint's EMA params
(`params["autoencoder"]`) are loaded, never trained again. They are the train step's frozen
parameters: inside the step each micro-batch's images are encoded
(`LatentSpace.preprocess`: a draw of q(z | x) keyed on the step and the example, or its mean)
and scaled by `config.latent.scale_factor`, and the U-Net is trained on those latents. Samples
are decoded back to pixels.

Two settings are resolved when a run starts and saved in its config.json, so that a resumed run,
scripts/sample.py and evaluation use the same latent space: `latent.autoencoder_step` (the
autoencoder checkpoint; None: the newest) and `latent.scale_factor` (None: 1 / the std of the
latents of the first `latent.scale_examples` training images, as Stable Diffusion's 0.18215 was
measured). A resumed run reads them back from its workdir's config.json; giving other values
then fails.
"""

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffax import autoencoder_loss
from diffax import latent as latent_lib
from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import kinds
from diffax.pipeline import parallel
from diffax.pipeline.workdir import Workdir

# The posterior draws of a training step: fold_in(the step's key, SEED_STREAM); of the scale
# measurement: fold_in(key(seed), SEED_STREAM) (the run's streams: 0 init, 1 train steps, 2
# sample grids).
SEED_STREAM = 3


def enabled(config) -> bool:
  """Whether `config` trains (or samples) in an autoencoder's latent space."""
  section = config.get("latent")
  return bool(section is not None and section.get("autoencoder_workdir"))


def autoencoder_run(config) -> tuple[Workdir, object]:
  """The autoencoder's workdir and saved config, checked against `config.data`.

  Raises:
    ValueError: naming `config.latent.autoencoder_workdir`, when it does not exist, holds no
      config.json, is not an autoencoder run, was trained on images of another size or
      channel count, or holds no checkpoint (of `config.latent.autoencoder_step`).
  """
  path = config.latent.autoencoder_workdir
  field = f"config.latent.autoencoder_workdir={path}"
  kind = kinds.kind(config.data)
  if kind != "image":
    raise ValueError(f"{field} is set on config.data.kind={kind!r}: latent diffusion runs on "
                     f"images; unset config.latent.autoencoder_workdir to train on the clips")
  how = (f"train one first: python scripts/train.py "
         f"--config=configs/<data>_autoencoder.py --workdir={path}")
  if not os.path.isdir(path):
    raise ValueError(f"{field} does not exist; {how}")
  workdir = Workdir(path)
  if not os.path.exists(workdir.config):
    raise ValueError(f"{field} holds no config.json, so it is no training run; {how}")
  ae_config = workdir.load_config()
  task = ae_config.get("task", "diffusion")
  if task != "autoencoder":
    raise ValueError(f"{field} is a config.task={task!r} run, not an autoencoder "
                     f"(config.task='autoencoder')")
  theirs = (ae_config.data.image_size, ae_config.data.channels)
  ours = (config.data.image_size, config.data.channels)
  if theirs != ours:
    raise ValueError(
        f"{field} was trained on {theirs[0]}x{theirs[0]} images with {theirs[1]} channel(s), "
        f"but config.data.image_size={ours[0]}, config.data.channels={ours[1]}; use an "
        f"autoencoder trained on this run's data or set config.data to match")
  steps = checkpoint.steps_in(workdir.checkpoints)
  if not steps:
    raise ValueError(f"{field} holds no checkpoint yet (untrained); train it first: python "
                     f"scripts/train.py --config=... --workdir={path}")
  step = config.latent.autoencoder_step
  if step is not None and step not in steps:
    raise ValueError(f"config.latent.autoencoder_step={step}: {path} holds no checkpoint of "
                     f"that step (it holds {steps}); None takes the newest")
  return workdir, ae_config


def latent_shape(config) -> tuple:
  """The shape `(H/f, W/f, z)` of one latent of `config`'s autoencoder."""
  _, ae_config = autoencoder_run(config)
  return build.autoencoder(ae_config).latent_shape


class LatentSpace:
  """A frozen autoencoder's latent space, scaled: encode images, decode latents.

  Attributes:
    autoencoder: the `diffax.models.autoencoder.Autoencoder`.
    params: its EMA params, replicated over the mesh.
    step: the autoencoder checkpoint they come from.
    scale_factor: what the latents are multiplied by (None until resolved).
    workdir: the autoencoder's run directory.
  """

  def __init__(self, autoencoder, params, *, step: int, workdir: Workdir,
               scale_factor: Optional[float], sample_posterior: bool, seed: int, mesh):
    self.autoencoder = autoencoder
    self.params = params
    self.step = step
    self.workdir = workdir
    self.scale_factor = scale_factor
    self.sample_posterior = sample_posterior
    self.mesh = mesh
    self._measure_rng = parallel.replicate(
        jax.random.fold_in(jax.random.key(seed), SEED_STREAM), mesh)
    ae = autoencoder

    def encode(p, x, scale, rng, first):
      noise = None
      if rng is not None:  # image i of the call is example first + i
        index = first + jnp.arange(x.shape[0])
        noise = latent_lib.noise_per_example(rng, index, ae.latent_shape)
      return latent_lib.encode(ae, p, x, scale, noise=noise)

    self._encode = jax.jit(encode)
    self._decode = jax.jit(lambda p, z, scale: latent_lib.decode(ae, p, z, scale))

  @property
  def shape(self) -> tuple:
    """One latent, `(H/f, W/f, z)`."""
    return self.autoencoder.latent_shape

  @property
  def image_shape(self) -> tuple:
    return self.autoencoder.sample_shape

  @property
  def factor(self) -> int:
    return self.autoencoder.factor

  def _place(self, x):
    """Host arrays (the same on every process) onto the mesh: split over the batch when it
    divides evenly, else replicated. Device arrays stay where they are."""
    if isinstance(x, jax.Array):
      return x
    x = np.asarray(x, np.float32)
    sharding = (parallel.batch_sharding(self.mesh) if len(x) % self.mesh.size == 0
                else parallel.replicated(self.mesh))
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  def _scale(self, scale):
    scale = self.scale_factor if scale is None else scale
    if scale is None:
      raise ValueError("the latent scale factor is not resolved yet (latent.resolve)")
    return np.float32(scale)

  def encode(self, images, *, scale: Optional[float] = None, rng: Optional[jax.Array] = None,
             first: int = 0) -> jax.Array:
    """Images `[N, H, W, C]` in [-1, 1] -> scaled latents `[N, h, w, z]`: the posterior means
    (editing: the latent of an image to inpaint or to SDEdit), or with `rng` posterior draws,
    image i's keyed on fold_in(rng, first + i). `scale` defaults to the resolved one."""
    return self._encode(self.params, self._place(images), self._scale(scale), rng,
                        np.int32(first))

  def preprocess(self, frozen, batch: dict, rng: jax.Array) -> dict:
    """Inside the train step (`step.make_train_step`'s preprocess): the micro-batch's images
    -> their scaled latents, encoded with `frozen` (these params). With `sample_posterior`
    each is a draw of q(z | x) keyed on the step's rng and the example's index in the global
    batch, so resume and gradient accumulation draw the same; else the posterior mean."""
    ae, x = self.autoencoder, batch["x"]
    noise = None
    if self.sample_posterior:
      index = batch.get("index", jnp.arange(x.shape[0]))
      noise = latent_lib.noise_per_example(jax.random.fold_in(rng, SEED_STREAM), index,
                                           ae.latent_shape)
    return dict(batch, x=latent_lib.encode(ae, frozen, x, self._scale(None), noise=noise))

  def decode(self, latents: jax.Array) -> jax.Array:
    """Scaled latents `[N, h, w, z]` -> images `[N, H, W, C]` (on the latents' devices)."""
    return self._decode(self.params, self._place(latents), self._scale(None))

  def mask(self, mask: np.ndarray) -> np.ndarray:
    """A pixel mask `[N, H, W, C or 1]` (nonzero = known) -> the latent mask `[N, h, w, z]`:
    known where the whole f x f block is known (`diffax.latent.downsample_mask`)."""
    known = latent_lib.downsample_mask(np.asarray(mask), self.factor)
    return np.broadcast_to(known, known.shape[:-1] + self.shape[-1:])

  def measure_scale_factor(self, config) -> float:
    """1 / the std of the latents of the first `config.latent.scale_examples` training images
    (at most the split, rounded down to a multiple of the device count), drawn as training
    draws them (posterior draws from a key of their own), encoded `config.train.batch_size`
    at a time."""
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    requested = config.latent.scale_examples
    count = min(int(requested), data.dataset_info(config).num_examples)
    count -= count % self.mesh.size
    if count < 2:
      raise ValueError(f"config.latent.scale_examples={requested} must be at least 2 and the "
                       f"{self.mesh.size} device(s) (and the training split must hold them)")
    images = data.load_eval_images(config, count, split=config.data.split)["image"]
    rng = self._measure_rng if self.sample_posterior else None
    chunk = config.train.batch_size
    latents = [parallel.to_host(self.encode(images[i:i + chunk], scale=1.0, rng=rng, first=i))
               for i in range(0, count, chunk)]
    return latent_lib.scale_factor(np.concatenate(latents))


def load(config, mesh, *, scale_factor: Optional[float] = None,
         step: Optional[int] = None) -> LatentSpace:
  """The latent space of `config`'s autoencoder, its EMA params replicated over `mesh`.

  Args:
    config: a latent diffusion config (`enabled(config)`).
    mesh: the devices.
    scale_factor: default `config.latent.scale_factor` (None: unresolved; see `resolve`).
    step: the autoencoder checkpoint; default `config.latent.autoencoder_step` (None: newest).
  """
  workdir, ae_config = autoencoder_run(config)
  ae, disc = build.autoencoder(ae_config), build.discriminator(ae_config)
  init_fn = functools.partial(autoencoder_loss.init_params, ae, disc)
  step = config.latent.autoencoder_step if step is None else step
  params, step = checkpoint.load_ema_params(workdir, ae_config, init_fn, mesh=mesh, step=step)
  scale = config.latent.scale_factor if scale_factor is None else scale_factor
  return LatentSpace(ae, params["autoencoder"], step=step, workdir=workdir,
                     scale_factor=scale, sample_posterior=config.latent.sample_posterior,
                     seed=config.seed, mesh=mesh)


def load_trained(config, mesh) -> LatentSpace:
  """The latent space a trained run used (scripts/sample.py, evaluation).

  Raises:
    ValueError: when the config lacks the settings training resolves (not a trained run).
  """
  for field in ("autoencoder_step", "scale_factor"):
    if config.latent[field] is None:
      raise ValueError(f"config.latent.{field} is not set: a latent run's config.json gets it "
                       f"when its training starts; train first (scripts/train.py), or set it")
  return load(config, mesh)


def resolve(config, workdir: Workdir, mesh):
  """Loads the latent space for training in `workdir` and resolves its saved settings.

  A fresh run takes `config.latent.autoencoder_step` (None: the newest checkpoint) and
  `config.latent.scale_factor` (None: measured). A run that resumes (its workdir has
  checkpoints) takes both from its config.json; a different value given now fails.

  Returns:
    `(config, space)`: a copy of config with both settings filled in (to save), and the
    `LatentSpace`.

  Raises:
    ValueError: a resumed run given another autoencoder, checkpoint or scale than it was
      trained with.
  """
  lat = config.latent
  saved = None
  if checkpoint.latest_step_in(workdir.checkpoints) is not None and os.path.exists(
      workdir.config):
    saved = workdir.load_config().get("latent")
  step, scale = lat.autoencoder_step, lat.scale_factor
  if saved is not None and saved.get("scale_factor") is not None:
    here, there = (os.path.realpath(p) for p in (lat.autoencoder_workdir,
                                                 saved.autoencoder_workdir))
    if here != there:
      raise ValueError(f"config.latent.autoencoder_workdir={lat.autoencoder_workdir}, but "
                       f"{workdir} was trained on the latents of {saved.autoencoder_workdir}; "
                       f"resume with that one, or train in a new workdir")
    for field, given in (("autoencoder_step", step), ("scale_factor", scale)):
      if given is not None and given != saved[field]:
        raise ValueError(f"config.latent.{field}={given}, but {workdir} was trained with "
                         f"{saved[field]}: a resumed run keeps its latent space (leave it "
                         f"unset, or train in a new workdir)")
    step, scale = saved.autoencoder_step, saved.scale_factor
  space = load(config, mesh, step=step, scale_factor=scale)
  if space.scale_factor is None:
    space.scale_factor = space.measure_scale_factor(config)
  resolved = config.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.latent.autoencoder_step = space.step
    resolved.latent.scale_factor = float(space.scale_factor)
  resolved.lock()
  return resolved, space
