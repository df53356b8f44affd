"""The FID Inception network: pytorch-fid's InceptionV3 (`pt_inception-2015-12-05`) in Flax.

The network of the FID (Heusel et al. 2017) is TensorFlow's 2015 Inception graph, which
pytorch-fid ports as torchvision's InceptionV3 with four patched block types. This is that
network, layer for layer, up to the 2048-d output of the final average pool ("pool3"):

  input [N, H, W, 3] in [-1, 1] -> [0, 1] -> bilinear resize to 299x299 (as
  `F.interpolate(mode="bilinear", align_corners=False)`, no antialiasing) -> 2x - 1
  Conv2d_1a_3x3 (stride 2), Conv2d_2a_3x3, Conv2d_2b_3x3 (pad 1), max pool 3/2,
  Conv2d_3b_1x1, Conv2d_4a_3x3, max pool 3/2,
  Mixed_5b, 5c, 5d (FIDInceptionA), Mixed_6a (InceptionB),
  Mixed_6b, 6c, 6d, 6e (FIDInceptionC), Mixed_7a (InceptionD),
  Mixed_7b (FIDInceptionE_1), Mixed_7c (FIDInceptionE_2), global average pool -> [N, 2048]

Every convolution is torchvision's BasicConv2d: a bias-free convolution, batch norm (running
statistics, eps 1e-3) and ReLU. The FID patches: the 3x3 average pools of the A, C and E_1
blocks leave the zero padding out of the average (`count_include_pad=False`, as TensorFlow),
and the pool branch of E_2 is a max pool instead of an average pool.

Weights: `diffax.interop.inception_from_torch(state_dict)` turns pytorch-fid's `.pth` file
into the variables `inception_pool3` takes ({"params", "batch_stats"}). Nothing here downloads.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299       # pytorch-fid resizes every input to 299 x 299
FEATURE_DIM = 2048     # pool3
MIN_INPUT_SIZE = 75    # without the resize, the smallest input that reaches pool3
BN_EPSILON = 1e-3      # torchvision's BasicConv2d
# Full float32 matmuls and convolutions also on accelerators whose default is bfloat16 passes:
# the features must be those of the reference network, not an approximation of them.
PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
  """Conv (no bias) -> batch norm (running statistics) -> ReLU: torchvision's BasicConv2d."""
  features: int
  kernel: Sequence[int]
  strides: int = 1
  padding: Any = "VALID"

  @nn.compact
  def __call__(self, x):
    pad = self.padding
    if isinstance(pad, (tuple, list)):
      pad = [(pad[0], pad[0]), (pad[1], pad[1])]
    x = nn.Conv(self.features, tuple(self.kernel), strides=self.strides, padding=pad,
                use_bias=False, precision=PRECISION, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x):
  """3x3 average pool, stride 1, padding 1, the padding left out of the mean (FID patch)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


class InceptionA(nn.Module):
  """pytorch-fid's FIDInceptionA (Mixed_5b/c/d)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (Mixed_6a), unpatched."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
  """pytorch-fid's FIDInceptionC (Mixed_6b/c/d/e)."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (Mixed_7a), unpatched."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    bp = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
  """pytorch-fid's FIDInceptionE_1 (Mixed_7b, average pool) and _2 (Mixed_7c, max pool)."""
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                         axis=-1)
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         axis=-1)
    if self.max_pool:  # FIDInceptionE_2: TensorFlow's graph has a max pool here
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3_same(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's `InceptionV3(output_blocks=[3])` after its input transform: a network from
  `[N, H, W, 3]` in [-1, 1] (already resized) to the pool3 features `[N, 2048]`. Submodule
  names are torchvision's, so a state dict maps onto them name by name."""

  @nn.compact
  def __call__(self, x):
    x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))  # [N, 2048]


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """The `[out_size, in_size]` matrix of PyTorch's 1-D bilinear resize (`align_corners=False`,
  no antialiasing), computed in float32 as its CPU kernel does.

  Output pixel i reads the input at `src = (i + 0.5) * in / out - 0.5`, clamped at 0, from the
  pixels `floor(src)` and the next one (the last pixel repeats), weighted by the distance.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0.0))
  lo = np.floor(src).astype(np.int64)
  lo = np.minimum(lo, in_size - 1)
  hi = np.where(lo < in_size - 1, lo + 1, lo)
  frac = np.clip(src - lo.astype(np.float32), 0.0, 1.0).astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), np.float32(1.0) - frac)
  np.add.at(matrix, (rows, hi), frac)
  return matrix


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """`[N, H, W, C]` -> `[N, size, size, C]` as `F.interpolate(x, (size, size),
  mode="bilinear", align_corners=False)`: separable, one matrix per axis."""
  _, height, width, _ = images.shape
  rows = jnp.asarray(bilinear_matrix(height, size))  # [size, H]
  cols = jnp.asarray(bilinear_matrix(width, size))   # [size, W]
  out = jnp.einsum("ih,nhwc->niwc", rows, images, precision=PRECISION)
  return jnp.einsum("jw,niwc->nijc", cols, out, precision=PRECISION)


def check_images(images, *, name: str = "images") -> None:
  """Raises ValueError unless `images` is `[N, H, W, 1 or 3]` and, when its values are known
  (not traced), lies in [-1, 1]."""
  shape = np.shape(images)
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be [N, H, W, 3] (or 1 channel, repeated to RGB), got shape "
                     f"{shape}")
  if isinstance(images, jax.core.Tracer):
    return
  values = np.asarray(images)
  if values.size and (values.min() < -1.0 - 1e-3 or values.max() > 1.0 + 1e-3):
    raise ValueError(f"{name} must lie in [-1, 1], got values in [{values.min():.3g}, "
                     f"{values.max():.3g}]: map 8-bit images with x / 127.5 - 1 (and clip "
                     f"samples to [-1, 1])")


def inception_pool3(params, images: jax.Array, *, resize: bool = True) -> jax.Array:
  """The 2048-d pool3 features of pytorch-fid's FID Inception.

  Args:
    params: the network's variables, `{"params": ..., "batch_stats": ...}`
      (`diffax.interop.inception_from_torch`).
    images: `f32[N, H, W, 3]` in [-1, 1] (1 channel is repeated to RGB, as pytorch-fid's
      loader converts grayscale files to RGB).
    resize: resize to 299 x 299 as pytorch-fid does (its `resize_input=True`, the FID
      setting). False feeds the images at their size (at least 75 x 75).

  Returns:
    `f32[N, 2048]`.
  """
  check_images(images)
  images = jnp.asarray(images, jnp.float32)
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  x = (images + 1.0) / 2.0  # pytorch-fid's input range [0, 1]
  if resize:
    x = resize_bilinear(x, INPUT_SIZE)
  elif min(x.shape[1:3]) < MIN_INPUT_SIZE:
    raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} are too small for the network "
                     f"without the resize (at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}); keep "
                     f"resize=True")
  x = 2.0 * x - 1.0  # its normalize_input
  return FIDInceptionV3().apply(params, x)


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict:
  """The shapes of the network's variables, `{"params": ..., "batch_stats": ...}` of
  `jax.ShapeDtypeStruct`s (no computation)."""
  x = jax.ShapeDtypeStruct((1, MIN_INPUT_SIZE, MIN_INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: FIDInceptionV3().init(jax.random.key(0), x), x)
