"""Drawing images from a trained model: jitted, batched, data-parallel over every device.

`make_sample_fn` turns `(apply_fn, schedule, sampler settings)` into a `BatchSampler`, a function
of `(params, rng[, batch_index])` on the compile-once program of `sampling.make_sampler` (labels,
guidance and editing included); `generate` calls it batch by batch with a progress bar.
`load_run` reads a training workdir (its saved config and newest checkpoint) for
`scripts/sample.py`.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from diffax import checkpoint
from diffax import models
from diffax import optim
from diffax import parallel
from diffax import sampling
from diffax import schedules
from diffax import train_state as train_state_lib

CONFIG_FILE = "config.json"


# Sampling settings a run saved before these keys existed gets their defaults from here
# (configs/common.py holds the same defaults for new runs).
SAMPLE_DEFAULTS = {"spacing": "linspace", "eta": None, "guidance_scale": 1.0, "class_label": -1,
                   "threshold": 0.0}


@dataclasses.dataclass(frozen=True)
class BatchSampler:
  """`sampler(params, rng, batch_index=0) -> f32[batch_size, H, W, C]`, built by `make_sample_fn`.

  Every call runs the same compiled program: the settings are traced `Knobs`. `batch_index` picks
  batch i's labels and editing images, rows `i * batch_size ...` of the per-image arrays.
  """
  sampler: sampling.CompiledSampler
  knobs: sampling.Knobs
  batch_size: int
  labels: Optional[np.ndarray] = None       # i32[N] per image, or None
  per_image: tuple = ()                     # names of Knobs fields given as [N, H, W, C]
  arrays: tuple = ()                        # their [N, H, W, C] values, in that order
  out_sharding: Any = None

  def batch_knobs(self, batch_index: int = 0) -> sampling.Knobs:
    """The knobs of batch `batch_index`: its rows of the per-image labels and images."""
    rows = batch_index * self.batch_size + np.arange(self.batch_size)
    updates = {}
    if self.labels is not None:
      updates["cond"] = jnp.asarray(self.labels[rows % len(self.labels)], jnp.int32)  # [B]
    for name, array in zip(self.per_image, self.arrays):
      updates[name] = jnp.asarray(array[rows % len(array)])  # [B, H, W, C]
    return self.knobs._replace(**updates)

  def __call__(self, params, rng: jax.Array, batch_index: int = 0) -> jax.Array:
    run = _jitted_run(self.out_sharding)
    return run(self.sampler.apply_fn, params, rng, self.batch_knobs(batch_index),
               spec=self.sampler.spec)  # [B, H, W, C]


@functools.lru_cache(maxsize=None)
def _jitted_run(out_sharding):
  """One jit of the sampling program per output sharding, shared by every `BatchSampler`: a new
  sampler with new settings but the same static spec reuses the compiled program."""
  if out_sharding is None:
    return jax.jit(sampling.runner.run, static_argnames=("apply_fn", "spec"))
  return jax.jit(sampling.runner.run, static_argnames=("apply_fn", "spec"),
                 out_shardings=out_sharding)


def class_labels(config, num_images: int, class_label: Optional[int] = None) -> np.ndarray:
  """The labels of a conditional model's images: `class_label` for all, or i % num_classes when
  it is -1 (default: `config.sample.class_label`). `i32[num_images]`."""
  class_label = config.sample.class_label if class_label is None else class_label
  if class_label >= 0:
    return np.full((num_images,), class_label, np.int32)
  return (np.arange(num_images) % config.model.num_classes).astype(np.int32)


def check_edits(*, init_image: bool, mask: bool, strength: bool, resample: bool,
                prefix: str = "") -> None:
  """Raises ValueError when the editing options given do not go together.

  Inpainting needs init_image and mask (resample is its option); SDEdit needs init_image and
  strength. The arguments say which options were given; `prefix` goes before each name in the
  message ("--" for command-line flags).
  """
  p = prefix
  if mask and not init_image:
    raise ValueError(f"{p}mask needs {p}init_image: the image whose known pixels it marks")
  if strength and not init_image:
    raise ValueError(f"{p}strength (SDEdit) needs {p}init_image: the image to edit")
  if resample and not mask:
    raise ValueError(f"{p}resample (RePaint) needs {p}mask and {p}init_image")
  if init_image and not mask and not strength:
    raise ValueError(f"{p}init_image needs {p}mask (inpainting) or {p}strength (SDEdit)")


def make_sample_fn(apply_fn: Callable, schedule, config, *, batch_size: int, mesh=None,
                   sampler: Optional[str] = None, num_steps: Optional[int] = None,
                   eta: Optional[float] = None, clip_x0: Optional[bool] = None,
                   spacing: Optional[str] = None, threshold: Optional[float] = None,
                   guidance_scale: Optional[float] = None, labels=None, init_image=None,
                   mask=None, strength: Optional[float] = None,
                   resample: Optional[int] = None) -> BatchSampler:
  """A `sample_fn(params, rng[, batch_index]) -> f32[batch_size, H, W, C]` in [-1, 1]-ish.

  Built on `sampling.make_sampler`: the program is compiled once per static setting (sampler,
  number of steps, clipping, thresholding, guidance on/off, which edits) and every other setting
  is a traced knob. Settings left as None come from `config.sample`. With a mesh whose device
  count divides `batch_size`, the images are split over the devices ('data' axis) and XLA runs
  the whole sampler data-parallel; otherwise every device computes the full batch.

  A class-conditional model (`config.model.num_classes > 0`) draws the labels `labels` (`[N]`
  per image, batch i taking rows i * batch_size ...), else `config.sample.class_label` (-1:
  image i gets i % num_classes). A guidance scale other than 1 turns on classifier-free guidance
  (one model call on the doubled batch per step); 1 calls the conditional model alone.

  Args:
    apply_fn: the model, `apply_fn(params, x_t, t, cond=None) -> prediction`.
    schedule: the training schedule.
    config: the run's config (`config.sample` holds the defaults).
    batch_size: images per call.
    mesh: a 'data' mesh to split the batch over, or None (one device).
    sampler, num_steps, eta, clip_x0, spacing, threshold, guidance_scale: override
      `config.sample` (threshold 0 is off; eta None is the sampler's default).
    labels: `i32[N]` class labels (conditional models only).
    init_image: `[H, W, C]`, `[1, H, W, C]` or `[N, H, W, C]` in [-1, 1]: the image to edit
      (one image for every sample, or per image as labels are).
    mask: known pixels for inpainting (nonzero/True = known), shaped like init_image or
      broadcastable to it; needs init_image.
    strength: SDEdit strength in (0, 1]: start from init_image noised to t0 = strength * T.
    resample: RePaint's resample count (inpainting only), default 1.

  Returns:
    The `BatchSampler`.
  """
  cfg = config.sample
  setting = lambda value, key: cfg.get(key, SAMPLE_DEFAULTS.get(key)) if value is None else value
  sampler = setting(sampler, "sampler")
  num_steps = setting(num_steps, "num_steps")
  eta = setting(eta, "eta")
  clip_x0 = setting(clip_x0, "clip_x0")
  spacing = setting(spacing, "spacing")
  threshold = setting(threshold, "threshold")
  guidance_scale = setting(guidance_scale, "guidance_scale")
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  shape = (batch_size,) + image_shape
  num_classes = config.model.num_classes
  if not num_classes and (labels is not None or guidance_scale != 1):
    raise ValueError("labels and guidance_scale != 1 need a class-conditional model "
                     "(model.num_classes > 0)")
  guided = bool(num_classes) and guidance_scale != 1
  compiled = sampling.make_sampler(
      apply_fn, schedule, shape, sampler=sampler, max_steps=num_steps,
      prediction=config.diffusion.prediction, spacing=spacing, clip_x0=bool(clip_x0),
      threshold=float(threshold) if threshold else None,
      null_label=num_classes if guided else None)

  if num_classes:
    labels = (class_labels(config, batch_size) if labels is None
              else np.asarray(labels, np.int32).reshape(-1))
    if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}), got {np.unique(labels)}")
  check_edits(init_image=init_image is not None, mask=mask is not None,
              strength=strength is not None, resample=resample is not None)
  per_image, arrays = [], []
  if init_image is not None:
    init_image = _per_image("init_image", init_image, image_shape, np.float32)  # [N, H, W, C]
    if mask is not None:
      mask = _per_image("mask", mask, image_shape, None, any_channels=True) != 0  # [N', H, W, *]
      mask = np.broadcast_to(mask, mask.shape[:-1] + image_shape[-1:])  # [N', H, W, C]
      per_image += ["x_known", "mask"]
      arrays += [init_image, mask]
    if strength is not None:
      per_image.append("init_image")
      arrays.append(init_image)
  knobs = compiled.knobs(
      eta=eta, guidance_scale=guidance_scale if guided else None,
      cond=None if labels is None else labels[:1],
      x_known=None if mask is None else init_image[:1], mask=None if mask is None else mask[:1],
      resample=1 if resample is None else resample,
      init_image=None if strength is None else init_image[:1], strength=strength)

  out = None
  if mesh is not None:
    out = (parallel.batch_sharding(mesh) if batch_size % mesh.size == 0
           else parallel.replicated(mesh))
  return BatchSampler(sampler=compiled, knobs=knobs, batch_size=batch_size,
                      labels=None if labels is None else labels, per_image=tuple(per_image),
                      arrays=tuple(arrays), out_sharding=out)


def _per_image(name: str, array, image_shape, dtype, *, any_channels: bool = False
               ) -> np.ndarray:
  """`[H, W, C]` or `[N, H, W, C]` as `[N, H, W, C]`; a clear error if the image size differs.
  With `any_channels`, 1 channel is accepted too (a mask shared by every channel)."""
  array = np.asarray(array)
  array = array[None] if array.ndim == len(image_shape) else array
  shapes = [image_shape] + ([image_shape[:-1] + (1,)] if any_channels else [])
  if array.ndim != len(image_shape) + 1 or array.shape[1:] not in shapes:
    raise ValueError(f"{name} of shape {array.shape} does not fit the model's images "
                     f"{image_shape} (give [H, W, C] or [N, H, W, C])")
  return array if dtype is None else array.astype(dtype)


def generate(sample_fn: Callable, params, num_images: int, batch_size: int, rng: jax.Array, *,
             progress: bool = True) -> np.ndarray:
  """Calls `sample_fn` `ceil(num_images / batch_size)` times; returns `[num_images, ...]`.

  Batch i uses `fold_in(rng, i)`, so the images do not depend on how many are asked for; a
  `BatchSampler` also gets `batch_index=i` (its labels and editing images for those rows).
  """
  if num_images < 1:
    raise ValueError(f"num_images must be >= 1, got {num_images}")
  num_batches = -(-num_images // batch_size)
  chunks = []
  for i in tqdm.trange(num_batches, desc="sampling", unit="batch",
                       disable=not progress or jax.process_index() != 0):
    key = jax.random.fold_in(rng, i)
    images = (sample_fn(params, key, batch_index=i) if isinstance(sample_fn, BatchSampler)
              else sample_fn(params, key))
    chunks.append(parallel.to_host(images))
  return np.concatenate(chunks)[:num_images]


def save_config(config, workdir: str) -> str:
  """Writes the resolved config as `<workdir>/config.json` (what `load_config` reads back)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)  # never a half-written config
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The locked config saved by a training run in `workdir`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} not found: --workdir must be a directory written by scripts/train.py")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(_tuples(json.load(f)))
  for key, value in SAMPLE_DEFAULTS.items():  # a run saved before the key existed
    if key not in config.sample:
      config.sample[key] = value if value is not None else ml_collections.config_dict.placeholder(
          float)
  config.lock()
  return config


def load_run(workdir: str, *, mesh=None, config=None):
  """Loads a training run for sampling.

  Args:
    workdir: a directory written by a training run.
    mesh: where to place the params (default: every device).
    config: the run's config with changed `sample` settings (default: `load_config(workdir)`).

  Returns:
    `(config, apply_fn, schedule, ema_params, step)`, with the EMA params of the newest intact
    checkpoint, replicated over `mesh` (default: every device).
  """
  config = load_config(workdir) if config is None else config
  mesh = parallel.create_mesh() if mesh is None else mesh
  init_fn, apply_fn = models.create(config)
  tx, _ = optim.create_optimizer(config)
  create = lambda rng: train_state_lib.create_train_state(init_fn, tx, rng)
  target = parallel.abstract_state(create, mesh, jax.random.key(0))
  with checkpoint.from_config(config, workdir) as ckpt:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first, or check "
                              "--workdir")
    state = ckpt.restore_or_init(target)
  return config, apply_fn, schedules.from_config(config.diffusion), state.ema_params, int(
      state.step)


def _tuples(d):
  """JSON turns tuples into lists; configs use tuples for fixed-length fields."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d
