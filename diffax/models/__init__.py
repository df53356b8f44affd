"""Denoising networks. `create(config) -> (init_fn, apply_fn)` is the only entry point the rest
of diffax uses; nothing outside this package knows Flax.

  init_fn, apply_fn = diffax.models.create(config)
  params = init_fn(jax.random.key(0))          # the Flax 'params' collection, float32
  out = apply_fn(params, x_t, t)                # [B, H, W, C] -> [B, H, W, C], float32
  out = apply_fn(params, x_t, t, labels, train=True, rng=dropout_rng)
"""

import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from diffax.models import presets
from diffax.models import unet
from diffax.models.presets import PRESETS, apply_preset
from diffax.models.unet import UNet

# config.model.name -> builder(config, dtype) -> a Flax module called as
# module(x_t, t, cond, train=...) that returns a float32 array shaped like x_t.
MODELS = {"unet": unet.from_config}

# Compute dtypes (config.model.dtype); parameters are float32 whatever this is.
DTYPES = ("float32", "bfloat16", "float16")


def create(config, *, dtype=None) -> tuple[Callable, Callable]:
  """Builds the model named by config.model.name.

  Args:
    config: a diffax config (configs/common.py); reads config.model.* and
      config.data.image_size / config.data.channels.
    dtype: compute dtype (e.g. jnp.bfloat16 for mixed precision); None reads the optional
      config.model.dtype, default "float32". Parameters are float32 either way.

  Returns:
    `(init_fn, apply_fn)`: `init_fn(rng) -> params` and
    `apply_fn(params, x_t, t, cond=None, *, train=False, rng=None) -> prediction`, both pure
    and jittable. x_t is `[B, image_size, image_size, channels]`, t `i32[B]`, cond `i32[B]` or
    None; rng feeds dropout and is needed when train=True and config.model.dropout > 0.

  Raises:
    ValueError: on an unknown config.model.name or an inconsistent model/data config.
  """
  name = config.model.name
  if name not in MODELS:
    raise ValueError(f"unknown config.model.name {name!r}; choose one of {sorted(MODELS)}")
  if dtype is None:
    dtype = config.model.get("dtype", "float32")
  if (dtype if isinstance(dtype, str) else jnp.dtype(dtype).name) not in DTYPES:
    raise ValueError(f"unknown config.model.dtype {dtype!r}; choose one of {list(DTYPES)}")
  module = MODELS[name](config, dtype=jnp.dtype(dtype))
  size, channels = int(config.data.image_size), int(config.data.channels)
  num_classes = int(config.model.num_classes)
  dropout = float(config.model.dropout)

  def init_fn(rng: jax.Array):
    x = jnp.zeros((1, size, size, channels), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    cond = jnp.zeros((1,), jnp.int32) if num_classes else None
    return module.init({"params": rng}, x, t, cond, train=False)["params"]

  def apply_fn(params, x_t, t, cond=None, *, train: bool = False,
               rng: Optional[jax.Array] = None):
    if x_t.ndim != 4 or tuple(x_t.shape[1:]) != (size, size, channels):
      raise ValueError(f"x_t must be [B, {size}, {size}, {channels}] (config.data.image_size="
                       f"{size}, config.data.channels={channels}), got shape {x_t.shape}")
    if train and dropout > 0 and rng is None:
      raise ValueError(f"train=True with config.model.dropout={dropout} needs an rng for dropout")
    rngs = {"dropout": rng} if rng is not None else {}
    return module.apply({"params": params}, x_t, t, cond, train=train, rngs=rngs)

  return init_fn, apply_fn


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or `jax.eval_shape` structs)."""
  return sum(math.prod(getattr(p, "shape", ())) for p in jax.tree_util.tree_leaves(params))


__all__ = ["MODELS", "PRESETS", "UNet", "apply_preset", "count_params", "create", "presets",
           "unet"]
