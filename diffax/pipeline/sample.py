"""Drawing samples from a run: batched, data-parallel over every device, per-image reproducible.

`Request` holds what a user asks for (how many images, their labels or prompts, a low-res
image to upsample, an image to edit) and draws them batch by batch on the compile-once program
of `diffax.sampling.make_sampler`.
Sample i depends on the seed and i alone: batch size and device count change nothing.
A latent diffusion model's request samples latents and decodes each batch to pixels with its
frozen autoencoder (`latent.LatentSpace`); an image to edit is encoded, and an inpainting mask
downsampled to the latent grid (a latent is known where its whole f x f block of pixels is).
`load_ema_params` reads a training workdir's newest checkpoint; `sample_workdir` is
scripts/sample.py.
"""

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from diffax import sampling
from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import checks
from diffax.pipeline import conditions
from diffax.pipeline import latent
from diffax.pipeline import media
from diffax.pipeline import parallel
from diffax.pipeline.workdir import Workdir


def check_edits(*, init_image: bool, mask: bool, strength: bool, resample: bool,
                prefix: str = "", mask_name: str = "mask") -> None:
  """Raises ValueError when the editing options given do not go together.

  Inpainting needs init_image and mask (resample is its option); SDEdit needs init_image and
  strength. The arguments say which options were given; `prefix` goes before each name in the
  message ("--" for command-line flags); `mask_name` is the option that gave the mask
  (scripts/sample.py's --known_frames and --known_samples are masks too).
  """
  p, m = prefix, prefix + mask_name
  if mask and not init_image:
    raise ValueError(f"{m} needs {p}init_image: the example whose known part it marks")
  if strength and not init_image:
    raise ValueError(f"{p}strength (SDEdit) needs {p}init_image: the image to edit")
  if resample and not mask:
    raise ValueError(f"{p}resample (RePaint) needs {p}mask and {p}init_image")
  if init_image and not mask and not strength:
    raise ValueError(f"{p}init_image needs {p}mask (inpainting) or {p}strength (SDEdit)")


@functools.lru_cache(maxsize=None)
def _jitted_run(out_sharding):
  """One jit of the sampling program per output sharding, shared by every request: a request
  with new settings but the same static spec reuses the compiled program."""
  kwargs = {} if out_sharding is None else {"out_shardings": out_sharding}
  return jax.jit(sampling.compiled.run, static_argnames=("apply_fn", "spec"), **kwargs)


class Drawn(NamedTuple):
  """What a request draws, on the host: `images` `[N, H, W, C]` in pixels, and a latent
  model's `latents` `[N, h, w, z]` (scaled; None for a pixel model)."""
  images: np.ndarray
  latents: Optional[np.ndarray] = None


@dataclasses.dataclass(frozen=True)
class Request:
  """Images to draw with a compiled sampler: `request(params, rng) -> [num_images, ...]`.

  Attributes:
    sampler: the compiled sampler (its batch size is the shape's first axis).
    num_images: how many images.
    knobs: keyword settings of `sampler.knobs` shared by every image (steps, eta, guidance...).
    per_image: knob name -> an array of one row per image (`cond` holds a dict of them):
      batch b takes rows b * batch_size ...; an array of fewer rows is cycled.
    mesh: devices to split each batch over ('data' axis), or None for the default device.
    latent_space: a latent model's `latent.LatentSpace`: each batch is decoded with it.
  """
  sampler: sampling.CompiledSampler
  num_images: int
  knobs: dict = dataclasses.field(default_factory=dict)
  per_image: dict = dataclasses.field(default_factory=dict)
  mesh: Any = None
  latent_space: Any = None

  @property
  def batch_size(self) -> int:
    return self.sampler.spec.shape[0]

  def batch_knobs(self, index: int) -> sampling.Knobs:
    """The traced settings of batch `index`: its images' ids and rows of the per-image arrays."""
    rows = index * self.batch_size + np.arange(self.batch_size)
    take = lambda a: jnp.asarray(np.asarray(a)[rows % len(a)])
    kwargs = dict(self.knobs, ids=rows.astype(np.int32))
    for name, value in self.per_image.items():
      kwargs[name] = ({k: take(v) for k, v in value.items()} if isinstance(value, dict)
                      else take(value))
    return self.sampler.knobs(**kwargs)

  def __call__(self, params, rng: jax.Array, *, progress: bool = False) -> np.ndarray:
    """Draws the images, `[num_images, ...]` float32 on the host (pixels)."""
    return self.draw(params, rng, progress=progress).images

  def draw(self, params, rng: jax.Array, *, progress: bool = False) -> Drawn:
    """Draws the images (and a latent model's latents), float32 on the host."""
    if self.num_images < 1:
      raise ValueError(f"the number of images must be >= 1, got {self.num_images}")
    out_sharding = None
    if self.mesh is not None:
      out_sharding = (parallel.batch_sharding(self.mesh) if self.batch_size % self.mesh.size == 0
                      else parallel.replicated(self.mesh))
    run = _jitted_run(out_sharding)
    num_batches = -(-self.num_images // self.batch_size)
    images, latents = [], []
    for index in tqdm.trange(num_batches, desc="sampling", unit="batch",
                             disable=not progress or jax.process_index() != 0):
      x = run(self.sampler.apply_fn, params, rng, self.batch_knobs(index),
              spec=self.sampler.spec)
      if self.latent_space is not None:
        latents.append(parallel.to_host(x))
        x = self.latent_space.decode(x)
      images.append(parallel.to_host(x))
    cut = lambda chunks: np.concatenate(chunks)[:self.num_images] if chunks else None
    return Drawn(cut(images), cut(latents))


def request(config, net, noise_schedule, *, num_images: int, batch_size: int, mesh=None,
            class_label: Optional[int] = None, prompts=None, low_res=None,
            noise_level: Optional[float] = None, low_res_rng: Optional[jax.Array] = None,
            conditioner: Optional[conditions.Conditioner] = None, init_image=None, mask=None,
            strength: Optional[float] = None, resample: Optional[int] = None,
            latent_space=None, embedding=None) -> Request:
  """The `Request` of `config.sample` (its sampler settings, condition and guidance).

  Args:
    config: the run config.
    net: the model (`build.model`).
    noise_schedule: the training schedule.
    num_images: how many images.
    batch_size: images per sampler call; with a mesh, rounded up to a multiple of its size
      (the extra images are drawn and dropped).
    mesh: devices to split each batch over, or None.
    class_label: a conditional model's label for every image, -1 for i % num_classes;
      default `config.sample.class_label`.
    prompts: a text model's prompts, image i gets prompts[i % len(prompts)]; default
      `config.sample.prompts` (none: the empty caption).
    low_res: a super-resolution model's input `[n, h, w, C]` in [-1, 1] (image i gets row
      i % n), noised to `noise_level` (default `config.sample.noise_level`) with noise from
      `low_res_rng` folded with i.
    conditioner: the model's `conditions.Conditioner` (its text encoder loaded), or None to
      build one.
    init_image: `[N, *sample_shape]` (or one image) in [-1, 1], the image to edit.
    mask: inpainting: known pixels (nonzero = known), shaped like init_image (or 1 channel).
    strength: SDEdit strength in (0, 1].
    resample: RePaint's resample count (inpainting).
    latent_space: a latent model's `latent.LatentSpace` (its net draws latents): the images
      are decoded, an init_image encoded (posterior mean) and a mask downsampled to the
      latent grid. None: a pixel model (or a latent model's sampler checked without its
      autoencoder, which then draws undecoded latents).
    embedding: an unCLIP decoder's image embeddings `[n, D]`; image i gets row i % n.
  """
  check_edits(init_image=init_image is not None, mask=mask is not None,
              strength=strength is not None, resample=resample is not None)
  if mesh is not None:
    # Every device draws its share; a batch that did not split would run whole on each one.
    # Sample i depends on the seed and i alone, so the extra samples change none of the others.
    batch_size = -(-batch_size // mesh.size) * mesh.size
  compiled = build.sampler(config, net, noise_schedule, batch_size=batch_size)
  knobs = {"eta": config.sample.eta}
  if compiled.spec.guided:
    knobs["guidance_scale"] = config.sample.guidance_scale
  per_image = {}
  conditioner = conditioner or conditions.Conditioner(config, net)
  cond = conditioner.sampling(
      num_images, class_label=config.sample.class_label if class_label is None else class_label,
      prompts=config.sample.prompts if prompts is None else prompts, low_res=low_res,
      noise_level=config.sample.noise_level if noise_level is None else noise_level,
      rng=low_res_rng, embedding=embedding)
  if cond is not None:
    per_image["cond"] = cond
  space = latent_space
  shape = net.sample_shape if space is None else space.image_shape
  if init_image is not None:
    init_image = _per_image("init_image", init_image, shape).astype(np.float32)
    if space is not None:
      init_image = parallel.to_host(space.encode(init_image))  # [N, h, w, z]
    if mask is not None:
      mask = _per_image("mask", mask, shape, any_channels=True) != 0
      if space is not None:
        mask = space.mask(mask)  # [N, h, w, z]
      per_image["x_known"] = init_image
      per_image["mask"] = np.broadcast_to(mask, mask.shape[:-1] + init_image.shape[-1:])
      knobs["resample"] = 1 if resample is None else resample
    if strength is not None:
      per_image["init_image"] = init_image
      knobs["strength"] = strength
  return Request(sampler=compiled, num_images=num_images, knobs=knobs, per_image=per_image,
                 mesh=mesh, latent_space=space)


def _per_image(name: str, array, shape, *, any_channels: bool = False) -> np.ndarray:
  """One image or `[N, *shape]` as `[N, *shape]`; a clear error if the size differs. With
  `any_channels`, 1 channel is accepted too (a mask shared by every channel)."""
  array = np.asarray(array)
  array = array[None] if array.ndim == len(shape) else array
  shapes = [tuple(shape)] + ([tuple(shape[:-1]) + (1,)] if any_channels else [])
  if array.ndim != len(shape) + 1 or array.shape[1:] not in shapes:
    raise ValueError(f"{name} of shape {array.shape} does not fit the model's samples "
                     f"{tuple(shape)} (give one sample or [N, {', '.join(map(str, shape))}])")
  return array


def load_ema_params(workdir: Workdir, config, net, *, mesh=None):
  """The EMA params of the newest checkpoint of a training run, and its step.

  Args:
    workdir: the run directory.
    config: its config (`workdir.load_config()`).
    net: its model (`build.model(config)`).
    mesh: where to place the params (default: every device), replicated.

  Returns:
    `(ema_params, step)`.

  Raises:
    FileNotFoundError: no checkpoint in the workdir.
  """
  return checkpoint.load_ema_params(workdir, config, net.init_fn, mesh=mesh)


def check_diffusion_run(workdir: Workdir, config) -> None:
  """Raises ValueError unless `config` (saved in `workdir`) is a diffusion run: an
  autoencoder run has nothing to sample."""
  task = config.get("task", "diffusion")
  if task != "diffusion":
    raise ValueError(f"--workdir={workdir} is a config.task={task!r} run; sampling draws from "
                     f"diffusion runs (a latent one names this workdir in "
                     f"config.latent.autoencoder_workdir)")


def load_model(config, mesh):
  """The network and noise schedule of a run's config, and for a latent run its latent space
  (the autoencoder checkpoint and scale factor that training saved in the config).

  Returns:
    `(net, noise_schedule, latent_space or None)`.
  """
  space = latent.load_trained(config, mesh) if latent.enabled(config) else None
  net = build.model(config, shape=None if space is None else space.shape)
  return net, build.schedule(config), space


def grid_layout(config, num_images: int, prompts=None) -> dict:
  """How a grid of a run's samples is laid out (`media.save_samples` keywords): one row per
  prompt, labelled with it, for a text model; one column per class for a class model drawing
  every class; else square."""
  prompts = list(config.sample.prompts if prompts is None else prompts)
  if config.model.get("context_dim") and prompts:
    return {"labels": [prompts[i % len(prompts)] for i in range(num_images)]}
  num_classes = config.model.num_classes
  if num_classes and config.sample.class_label == -1:
    return {"ncols": num_classes}
  return {}


def low_res_rng(seed: int) -> jax.Array:
  """The key of a request's low-res augmentation noise (the samples' key is key(seed))."""
  return jax.random.fold_in(jax.random.key(seed), 1)


def sample_workdir(workdir: Workdir, config, *, out: Optional[str] = None, seed: int = 0,
                   prompts=None, low_res=None, init_image=None, mask=None,
                   strength: Optional[float] = None, resample: Optional[int] = None,
                   progress: bool = True, save_latents: bool = False):
  """Draws `config.sample.num_images` examples from a run's EMA params; writes a PNG grid and
  the float32 samples (.npz, key `samples`) beside it, and for video an animated GIF, for audio
  WAV files (`media.save_samples`).

  Args:
    workdir: the run directory.
    config: its config with the sampling settings to use (`config.sample`).
    out: the PNG path (default `workdir.default_samples()`).
    seed: the sampling seed: image i depends on it and i alone.
    prompts: a text model's prompts (default `config.sample.prompts`); the grid has a row per
      prompt, labelled with it.
    low_res: a super-resolution model's input (see `request`).
    init_image, mask, strength, resample: editing in pixels (see `request`).
    progress: show a progress bar.
    save_latents: a latent model's .npz holds its latents too (key `latents`, scaled).

  Returns:
    `(paths, step)`: the paths written by process 0, `(png, npz, ...)` (empty on other
    processes), and the checkpoint's step.
  """
  check_diffusion_run(workdir, config)
  checks.check_sampling(config)
  mesh = parallel.create_mesh()
  net, noise_schedule, space = load_model(config, mesh)
  req = request(config, net, noise_schedule, num_images=config.sample.num_images,
                batch_size=config.sample.batch_size, mesh=mesh, prompts=prompts,
                low_res=low_res, low_res_rng=low_res_rng(seed), init_image=init_image,
                mask=mask, strength=strength, resample=resample, latent_space=space)
  req.batch_knobs(0)  # checks every setting before the checkpoint is read
  params, step = load_ema_params(workdir, config, net, mesh=mesh)
  drawn = req.draw(params, jax.random.key(seed), progress=progress)
  paths = ()
  if jax.process_index() == 0:
    arrays = {"latents": drawn.latents} if save_latents and drawn.latents is not None else {}
    paths = media.save_samples(out or workdir.default_samples(), drawn.images, config.data,
                               arrays=arrays, **grid_layout(config, len(drawn.images), prompts))
  return paths, step
