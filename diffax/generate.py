"""Drawing images from a trained model: jitted, batched, data-parallel over every device.

`make_sample_fn` turns `(apply_fn, schedule, sampler settings)` into one jitted function of
`(params, rng)`; `generate` calls it batch by batch with a progress bar. `load_run` reads a
training workdir (its saved config and newest checkpoint) for `scripts/sample.py`.
"""

import json
import os
from typing import Callable, Optional

import jax
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


def make_sample_fn(apply_fn: Callable, schedule, config, *, batch_size: int, mesh=None,
                   sampler: Optional[str] = None, num_steps: Optional[int] = None,
                   eta: Optional[float] = None, clip_x0: Optional[bool] = None) -> Callable:
  """One jitted `sample_fn(params, rng) -> f32[batch_size, H, W, C]` in [-1, 1]-ish.

  Settings left as None come from `config.sample`. With a mesh whose device count divides
  `batch_size`, the images are split over the devices ('data' axis) and XLA runs the whole
  sampler data-parallel; otherwise every device computes the full batch.
  """
  cfg = config.sample
  sampler = cfg.sampler if sampler is None else sampler
  num_steps = cfg.num_steps if num_steps is None else num_steps
  eta = cfg.eta if eta is None else eta
  clip_x0 = cfg.clip_x0 if clip_x0 is None else clip_x0
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.channels)
  prediction = config.diffusion.prediction

  def sample_fn(params, rng):
    model_fn = lambda x_t, t: apply_fn(params, x_t, t)
    return sampling.sample(model_fn, schedule, shape, rng, sampler=sampler, num_steps=num_steps,
                           eta=eta, prediction=prediction, clip_x0=clip_x0)

  if mesh is None:
    return jax.jit(sample_fn)
  out = (parallel.batch_sharding(mesh) if batch_size % mesh.size == 0
         else parallel.replicated(mesh))
  return jax.jit(sample_fn, out_shardings=out)


def generate(sample_fn: Callable, params, num_images: int, batch_size: int, rng: jax.Array, *,
             progress: bool = True) -> np.ndarray:
  """Calls `sample_fn` `ceil(num_images / batch_size)` times; returns `[num_images, ...]`.

  Batch i uses `fold_in(rng, i)`, so the images do not depend on how many are asked for.
  """
  if num_images < 1:
    raise ValueError(f"num_images must be >= 1, got {num_images}")
  num_batches = -(-num_images // batch_size)
  chunks = []
  for i in tqdm.trange(num_batches, desc="sampling", unit="batch",
                       disable=not progress or jax.process_index() != 0):
    chunks.append(parallel.to_host(sample_fn(params, jax.random.fold_in(rng, i))))
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
