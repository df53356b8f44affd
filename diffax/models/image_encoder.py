"""A small convolutional image tower with a linear projection: the image half of a CLIP.

  x [B, H, W, C] in [-1, 1]
  level i (widths[i]): conv3x3 -> GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU,
                       then 2x2 average pooling (not after the last level)
  global average pool -> Dense(hidden_dim) -> SiLU -> Dense(embedding_dim) = the projection
  -> L2-normalized: the image embedding

  enc = diffax.models.image_encoder.create(sample_shape=(8, 8, 1), embedding_dim=384)
  params = enc.init_fn(jax.random.key(0))
  emb = enc.apply_fn(params, images)       # [B, 8, 8, 1] -> f32[B, 384], unit norm

Trained contrastively against a frozen text encoder (`diffax.contrastive`), its embeddings are
what a diffusion prior generates and an unCLIP decoder reads as `cond["embedding"]`.
"""

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvImageTower(nn.Module):
  """See the module docstring."""
  embedding_dim: int
  widths: Sequence[int] = (32, 64)
  hidden_dim: int = 256
  num_groups: int = 8

  @nn.compact
  def __call__(self, x):
    for level, width in enumerate(self.widths):
      for j in range(2):
        x = nn.Conv(width, (3, 3), name=f"conv_{level}_{j}")(x)
        x = nn.GroupNorm(num_groups=self.num_groups, name=f"norm_{level}_{j}")(x)
        x = nn.silu(x)
      if level < len(self.widths) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))  # [B, widths[-1]]
    x = nn.silu(nn.Dense(self.hidden_dim, name="hidden")(x))  # [B, hidden_dim]
    x = nn.Dense(self.embedding_dim, name="projection")(x)  # [B, embedding_dim]
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


@dataclasses.dataclass(frozen=True)
class ImageEncoder:
  """An image tower as pure functions.

  Attributes:
    init_fn: `init_fn(rng) -> params`.
    apply_fn: `apply_fn(params, x [B, H, W, C]) -> f32[B, embedding_dim]`, unit-norm rows.
    sample_shape: one image, (H, W, C).
    embedding_dim: D.
  """
  init_fn: Callable
  apply_fn: Callable
  sample_shape: tuple
  embedding_dim: int


def create(*, sample_shape, embedding_dim: int, widths: Sequence[int] = (32, 64),
           hidden_dim: int = 256, num_groups: int = 8) -> ImageEncoder:
  """Builds the image tower for images of `sample_shape` (H, W, C).

  Raises:
    ValueError: naming the keyword: a non-image shape, a size that the pooling does not
      divide, num_groups not dividing a width, or a size < 1.
  """
  sample_shape = tuple(int(d) for d in sample_shape)
  if len(sample_shape) != 3:
    raise ValueError(f"sample_shape must be (H, W, C) for the image tower, got {sample_shape}")
  widths = tuple(int(w) for w in widths)
  for name, value in (("embedding_dim", embedding_dim), ("hidden_dim", hidden_dim),
                      ("num_groups", num_groups)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  if not widths or any(w < 1 or w % num_groups for w in widths):
    raise ValueError(f"widths={widths} must be non-empty and each divisible by num_groups="
                     f"{num_groups}")
  pool = 2 ** (len(widths) - 1)
  if sample_shape[0] % pool or sample_shape[1] % pool:
    raise ValueError(f"widths={widths} pool {len(widths) - 1} time(s) by 2, which does not "
                     f"divide the image size {sample_shape[0]}x{sample_shape[1]}")
  module = ConvImageTower(embedding_dim=embedding_dim, widths=widths, hidden_dim=hidden_dim,
                          num_groups=num_groups)

  def init_fn(rng):
    return module.init(rng, jnp.zeros((1, *sample_shape), jnp.float32))["params"]

  def apply_fn(params, x):
    x = jnp.asarray(x, jnp.float32)
    if tuple(x.shape[1:]) != sample_shape:
      raise ValueError(f"images must be [B, {', '.join(map(str, sample_shape))}] (the image "
                       f"tower's sample_shape), got shape {tuple(x.shape)}")
    return module.apply({"params": params}, x)

  return ImageEncoder(init_fn=init_fn, apply_fn=jax.named_call(apply_fn, name="image_encoder"),
                      sample_shape=sample_shape, embedding_dim=int(embedding_dim))
