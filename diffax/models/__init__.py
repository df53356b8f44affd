"""Denoising networks. `create(...) -> Model` is the only entry point the rest of diffax uses;
nothing outside this package knows Flax.

  model = diffax.models.create("unet", sample_shape=(8, 8, 1), base_channels=32,
                               channel_mult=(1, 2), num_classes=10)
  init_fn, apply_fn = model                     # a Model unpacks as (init_fn, apply_fn)
  params = init_fn(jax.random.key(0))           # the Flax 'params' collection, float32
  out = apply_fn(params, x_t, t)                # [B, 8, 8, 1] -> [B, 8, 8, 1], float32
  out = apply_fn(params, x_t, t, {"label": labels}, train=True, rng=dropout_rng)
  model.null_cond                               # {"label": 10}: the dropped condition

The same call with `sample_shape=(L, C)` builds the 1-D network (audio), with `(T, H, W, C)` the
video network (factorized space-time attention); see `unet`. `create("mlp", sample_shape=(D,),
embedding_dim=E)` is a denoiser of vectors (unCLIP's prior over embeddings; see `mlp`).

The autoencoder of latent diffusion is not a denoiser; it has its own entry point:

  ae = diffax.models.create_autoencoder(sample_shape=(8, 8, 1), channel_mult=(1, 2))
  mean, logvar = ae.encode(params, x)           # [B, 8, 8, 1] -> [B, 4, 4, 4] each
  x_rec = ae.decode(params, z)                  # and back
  disc = diffax.models.create_discriminator(sample_shape=(8, 8, 1), num_layers=1)

Arguments are keywords and arrays; a bad value raises ValueError naming the keyword.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from diffax import conditioning
from diffax.models import autoencoder
from diffax.models import mlp
from diffax.models import unet

# name -> builder(sample_shape, dtype, fast_layers, **arch) -> (flax module, null_cond).
# The module is called as module(x_t, t, cond, train=...) and returns float32 shaped like x_t.
MODELS = {"unet": unet.build, "mlp": mlp.build}

# Compute dtypes; parameters are float32 whatever this is.
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Model:
  """A network as pure functions. Unpacks as `init_fn, apply_fn = model`.

  Attributes:
    init_fn: `init_fn(rng) -> params`.
    apply_fn: `apply_fn(params, x_t, t, cond=None, *, train=False, rng=None) -> prediction`,
      x_t `[B, *sample_shape]`, t `i32[B]`, cond a conditioning dict (`diffax.conditioning`) or
      None (the null condition of every key the model reads); rng feeds dropout when training.
    null_cond: the value each droppable key of cond takes when dropped (no batch axis); empty
      for an unconditional model.
    cond_keys: the keys of cond the model reads.
    sample_shape: the shape of one example, e.g. (H, W, C); (L, C) or (T, H, W, C) for 1-D
      signals or video.
  """
  init_fn: Callable
  apply_fn: Callable
  null_cond: dict
  cond_keys: tuple
  sample_shape: tuple

  def __iter__(self):
    return iter((self.init_fn, self.apply_fn))


def fast_layers_default() -> bool:
  """Whether the hand-written-gradient layers (`ops`) serve this backend: on CPU, where they
  were measured faster (benchmarks/README.md); elsewhere Flax's plain autodiff."""
  return jax.default_backend() == "cpu"


def create(name: str = "unet", *, sample_shape, dtype="float32",
           fast_layers: Optional[bool] = None, **arch) -> Model:
  """Builds the network `name`.

  Args:
    name: a key of `MODELS`.
    sample_shape: the shape of one example: `(L, C)` (1-D signals such as audio), `(H, W, C)`
      (images) or `(T, H, W, C)` (video); the network follows its rank.
    dtype: compute dtype, a key of `DTYPES` or a numpy dtype; parameters are float32 always.
    fast_layers: use the layers with hand-written gradients (`ops`); None picks by backend
      (`fast_layers_default`). Same parameters and values either way.
    **arch: the architecture's keywords (see `unet.UNet`).

  Returns:
    The `Model`.

  Raises:
    ValueError: on an unknown name or dtype, or an architecture that does not fit
      sample_shape; the message names the keyword.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model name {name!r}; choose one of {sorted(MODELS)}")
  dtype, fast_layers = _resolve(dtype, fast_layers)
  sample_shape = tuple(int(d) for d in sample_shape)
  module, null_cond = MODELS[name](sample_shape, dtype, fast_layers, **arch)
  cond_keys = tuple(module.cond_keys)
  dropout = float(getattr(module, "dropout", 0.0))

  def init_fn(rng: jax.Array):
    x = jnp.zeros((1, *sample_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    cond = module.init_cond(sample_shape)  # every key the network reads, batch 1
    return module.init({"params": rng}, x, t, cond, train=False)["params"]

  def apply_fn(params, x_t, t, cond=None, *, train: bool = False,
               rng: Optional[jax.Array] = None):
    if tuple(x_t.shape[1:]) != sample_shape or x_t.ndim != len(sample_shape) + 1:
      raise ValueError(f"x_t must be [B, {', '.join(map(str, sample_shape))}] (the model's "
                       f"sample_shape), got shape {tuple(x_t.shape)}")
    if cond is not None and not isinstance(cond, dict):
      raise ValueError(f"cond must be a dict of arrays (e.g. {{'label': labels}}) or None, got "
                       f"{type(cond).__name__}")
    extra = sorted(set(cond or ()) - set(cond_keys))
    if extra:
      raise ValueError(f"cond has key(s) {extra} that this model does not read; it reads "
                       f"{list(cond_keys) or 'none (an unconditional model)'}")
    if train and dropout > 0 and rng is None:
      raise ValueError(f"train=True with dropout={dropout} needs an rng for dropout")
    rngs = {"dropout": rng} if rng is not None else {}
    return module.apply({"params": params}, x_t, t, cond, train=train, rngs=rngs)

  return Model(init_fn=init_fn, apply_fn=apply_fn, null_cond=dict(null_cond),
               cond_keys=cond_keys, sample_shape=sample_shape)


def _resolve(dtype, fast_layers):
  """(the numpy compute dtype, whether to use the fast layers), checked."""
  dtype_name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
  if dtype_name not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {list(DTYPES)}")
  fast_layers = fast_layers_default() if fast_layers is None else bool(fast_layers)
  return jnp.dtype(dtype_name), fast_layers


def create_autoencoder(*, sample_shape, dtype="float32", fast_layers: Optional[bool] = None,
                       **arch) -> autoencoder.Autoencoder:
  """Builds the KL autoencoder of latent diffusion (`autoencoder.Autoencoder`).

  Args:
    sample_shape: the image shape `(H, W, C)`.
    dtype: compute dtype, a key of `DTYPES`; parameters are float32 always.
    fast_layers: the hand-written-gradient layers; None picks by backend.
    **arch: the architecture's keywords (see `autoencoder.build`).

  Raises:
    ValueError: on a bad dtype or an architecture that does not fit sample_shape.
  """
  dtype, fast_layers = _resolve(dtype, fast_layers)
  return autoencoder.build(sample_shape, dtype, fast_layers, **arch)


def create_discriminator(*, sample_shape, fast_layers: Optional[bool] = None,
                         **arch) -> autoencoder.Discriminator:
  """Builds the PatchGAN discriminator of the autoencoder's adversarial loss (float32)."""
  _, fast_layers = _resolve("float32", fast_layers)
  return autoencoder.build_discriminator(sample_shape, fast_layers, **arch)


def count_params(params) -> int:
  """Total number of scalars in a parameter pytree (arrays or `jax.eval_shape` structs)."""
  return sum(math.prod(getattr(p, "shape", ())) for p in jax.tree_util.tree_leaves(params))


__all__ = ["DTYPES", "MODELS", "Model", "autoencoder", "count_params", "create",
           "create_autoencoder", "create_discriminator", "fast_layers_default", "mlp", "unet"]
