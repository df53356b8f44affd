"""Building blocks of the DDPM / ADM U-Net (Ho et al. 2020; Dhariwal & Nichol 2021).

Every module works on channels-last features `[B, *spatial, C]` with one spatial axis (audio,
`[B, L, C]`), two (images, `[B, H, W, C]`) or three (video, `[B, T, H, W, C]`); a module's
parameters for 2-D input are those of the original 2-D U-Net. Every module takes a compute
`dtype` (float32 by default, bfloat16 for mixed precision); its parameters are always float32.
`fast` picks the hand-written gradients of `ops` (XLA:CPU) or JAX's autodiff of the plain form
(GPU, TPU); the parameters and values are the same. Kernels use the DDPM reference initializer (Xavier uniform); the last layer
of each residual branch is zero-initialised, so every block starts as the identity (DDPM's
`init_scale=0.`, ADM's `zero_module`).
"""

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.models import ops

Dtype = Any

default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zeros_init = nn.initializers.zeros


class Dense(nn.Module):
  """`flax.linen.Dense` (same parameters, same values) whose bias gradient is `ops.sum_rows`.

  Attributes:
    features: output width.
    dtype: compute dtype; the kernel and bias are float32 parameters cast to it.
    kernel_init: initializer of the `[in, features]` kernel.
  """
  features: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = default_init
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", zeros_init, (self.features,), jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())))
    return ops.add_bias(y, bias, fast=self.fast)


class Conv(nn.Module):
  """`flax.linen.Conv` (same parameters, same values; channels last, any number of spatial
  axes) whose bias gradient is `ops.sum_rows`.

  Attributes:
    features: output channels.
    kernel_size: the window, one entry per spatial axis.
    strides: the stride per spatial axis.
    padding: `(low, high)` padding per spatial axis, or "SAME" / "VALID".
    dtype: compute dtype; the kernel and bias are float32 parameters cast to it.
    kernel_init: initializer of the `[*kernel_size, in, features]` kernel.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: Any = "SAME"
  dtype: Dtype = jnp.float32
  kernel_init: Any = default_init
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    bias = self.param("bias", zeros_init, (self.features,), jnp.float32)
    y = _conv(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, self.padding)
    return ops.add_bias(y, bias, fast=self.fast)


def _conv(x, kernel, strides, padding):
  """XLA's convolution, channels last, any number of spatial axes."""
  n = x.ndim
  dims = jax.lax.ConvDimensionNumbers(lhs_spec=(0, n - 1, *range(1, n - 1)),
                                      rhs_spec=(n - 1, n - 2, *range(n - 2)),
                                      out_spec=(0, n - 1, *range(1, n - 1)))
  return jax.lax.conv_general_dilated(x, kernel, tuple(strides), padding,
                                      dimension_numbers=dims)


def _identity_taps(key, shape, dtype=jnp.float32):
  """A `[taps, C, C]` temporal kernel that passes the middle frame through unchanged."""
  del key
  taps, c, _ = shape
  return jnp.zeros(shape, dtype).at[taps // 2].set(jnp.eye(c, dtype=dtype))


class FrameConv(nn.Module):
  """A (2+1)-D convolution of video `[B, T, H, W, C]`: a 3x3 convolution of each frame, then a
  convolution of 3 frames along time at each pixel (Tran et al. 2018, R(2+1)D; Singer et al.
  2022, Make-A-Video's pseudo-3D convolution).

  Its `kernel` and `bias` are those of the 2-D `Conv` of an image U-Net; `time_kernel`
  `[3, features, features]` starts as the identity and `time_bias` as zero, so an untrained
  clip layer is the image layer applied frame by frame. Against a full 3x3x3 convolution it
  costs 9 + 3 instead of 27 multiply-adds per input and output channel pair.

  Attributes:
    features: output channels.
    strides: the stride of H and W (time is never strided).
    dtype: compute dtype; the parameters are float32, cast to it.
    kernel_init: initializer of the `[3, 3, in, features]` spatial kernel.
    fast: the bias gradients of `ops` (see the module docstring).
  """
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Dtype = jnp.float32
  kernel_init: Any = default_init
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    """x `[B, T, H, W, C]` -> `[B, T, H / stride, W / stride, features]`."""
    b, frames = x.shape[:2]
    c_out, dt = self.features, self.dtype
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], c_out), jnp.float32)
    bias = self.param("bias", zeros_init, (c_out,), jnp.float32)
    time_kernel = self.param("time_kernel", _identity_taps, (3, c_out, c_out), jnp.float32)
    time_bias = self.param("time_bias", zeros_init, (c_out,), jnp.float32)
    y = _conv(x.astype(dt).reshape(b * frames, *x.shape[2:]), kernel.astype(dt), self.strides,
              ((1, 1), (1, 1)))
    y = ops.add_bias(y, bias, fast=self.fast)
    y = y.reshape(b, frames, *y.shape[1:])  # [B, T, H', W', features]
    padded = jnp.pad(y, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    time_kernel = time_kernel.astype(dt)
    z = sum(jax.lax.dot_general(padded[:, tap:tap + frames], time_kernel[tap],
                                (((4,), (0,)), ((), ()))) for tap in range(3))
    return ops.add_bias(z, time_bias, fast=self.fast)


class GroupNorm(nn.Module):
  """`flax.linen.GroupNorm` (same parameters, same values) computed by `ops.group_norm`.

  Attributes:
    num_groups: channel groups; must divide the channel count.
    epsilon: added to the variance.
    dtype: the output dtype; statistics are float32 and parameters float32 always.
  """
  num_groups: int = 32
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", zeros_init, (c,), jnp.float32)
    return ops.group_norm(x, scale, bias, self.num_groups, self.epsilon,
                          fast=self.fast).astype(self.dtype)


# The two sinusoidal timestep embeddings of the literature (`timestep_embedding`).
TIME_EMBEDDINGS = ("ddpm", "adm")


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0,
                       form: str = "ddpm") -> jax.Array:
  """Sinusoidal embedding of timesteps (Vaswani et al. 2017, sec. 3.5).

  "ddpm" (DDPM appendix B, its reference code; diffusers' `flip_sin_to_cos=False,
  freq_shift=1`): emb(t) = [sin(t w_i), cos(t w_i)] with w_i = max_period^(-i / (dim/2 - 1)).
  "adm" (ADM, LDM and Stable Diffusion; diffusers' `flip_sin_to_cos=True, freq_shift=0`):
  emb(t) = [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2)).

  Args:
    t: timesteps, `[B]`, integer or float.
    dim: embedding width; an odd width is zero-padded by one.
    max_period: the slowest period.
    form: "ddpm" or "adm".

  Returns:
    `f32[B, dim]`.
  """
  if form not in TIME_EMBEDDINGS:
    raise ValueError(f"time_embedding={form!r} is unknown; choose one of {TIME_EMBEDDINGS}")
  half = dim // 2
  denominator = max(half - 1, 1) if form == "ddpm" else half
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / denominator)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]  # [B, half]
  waves = [jnp.sin(args), jnp.cos(args)]
  emb = jnp.concatenate(waves if form == "ddpm" else waves[::-1], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def conv3x3(features: int, dtype: Dtype, *, name: str, zero: bool = False, strides=1,
            fast: bool = True, ndim: int = 2):
  """A 'SAME'-padded convolution 3 wide on each of `ndim` spatial axes (pad 1 each side, as in
  ADM): 3x3 on images, 3 on audio, a (2+1)-D `FrameConv` on video (`ndim` 3; strides apply to
  H and W). `strides` is an int or one per spatial axis of the convolution."""
  init = zeros_init if zero else default_init
  if ndim == 3:
    strides = (1, strides, strides) if isinstance(strides, int) else tuple(strides)
    if strides[0] != 1:
      raise ValueError(f"a video convolution never strides time; got strides {strides}")
    return FrameConv(features, strides=strides[1:], dtype=dtype, kernel_init=init, fast=fast,
                     name=name)
  strides = (strides,) * ndim if isinstance(strides, int) else tuple(strides)
  return Conv(features, (3,) * ndim, strides=strides, padding=((1, 1),) * ndim,
              dtype=dtype, kernel_init=init, fast=fast, name=name)


def _broadcast_spatial(v: jax.Array, x: jax.Array) -> jax.Array:
  """`[B, C]` -> `[B, 1, ..., 1, C]`, broadcastable against `x` `[B, *spatial, C]`."""
  return v.reshape(v.shape[0], *(1,) * (x.ndim - 2), v.shape[-1])


class ResBlock(nn.Module):
  """Residual block: GN, SiLU, conv3x3, + time embedding, GN, SiLU, dropout, conv3x3, + skip.

  With `scale_shift` the time embedding modulates the second GroupNorm, norm(h) * (1 + scale)
  + shift (ADM's use_scale_shift_norm, Dhariwal & Nichol 2021 sec. 3); without it, it is added
  to the features before that norm (DDPM). The skip is a 1x1 projection when channels change.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    dropout: dropout rate before the last conv.
    scale_shift: ADM scale-shift time injection (True) or DDPM additive injection (False).
    dtype: compute dtype.
    fast: the layers' hand-written gradients (see the module docstring).
    epsilon: the GroupNorms' epsilon (1e-6 in DDPM; 1e-5 in Stable Diffusion's U-Net).
  """
  features: int
  num_groups: int
  dropout: float = 0.0
  scale_shift: bool = True
  dtype: Dtype = jnp.float32
  fast: bool = True
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x, emb, *, train: bool):
    """x `[B, *spatial, C_in]`, emb `[B, E]` -> `[B, *spatial, features]`."""
    dt, fast, ndim = self.dtype, self.fast, x.ndim - 2
    norm = lambda name: GroupNorm(self.num_groups, self.epsilon, dtype=dt, fast=fast, name=name)
    h = norm("norm1")(x)
    h = conv3x3(self.features, dt, fast=fast, name="conv1", ndim=ndim)(nn.silu(h))

    emb_width = 2 * self.features if self.scale_shift else self.features
    emb = Dense(emb_width, dtype=dt, fast=fast, name="temb_proj")(nn.silu(emb))
    emb = _broadcast_spatial(emb, h)  # [B, 1, ..., 1, emb_width]
    if self.scale_shift:
      scale, shift = jnp.split(emb, 2, axis=-1)
      h = norm("norm2")(h) * (1 + scale) + shift
    else:
      h = norm("norm2")(h + emb)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv3x3(self.features, dt, fast=fast, name="conv2", zero=True, ndim=ndim)(h)

    if x.shape[-1] != self.features:
      x = Dense(self.features, dtype=dt, fast=fast, name="skip")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Multi-head self-attention over positions, with a residual connection.

  x + proj(Attention(q, k, v)) where q, k, v are 1x1 projections of GroupNorm(x) and the
  attention is softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017, eq. 1); the logits and
  softmax are computed in float32 whatever the compute dtype. The GroupNorm statistics are
  those of the whole example; the attention runs over the positions along `axes`, separately for
  each position of the other spatial axes (folded into the batch).

  Attributes:
    num_heads: attention heads; must divide the channel count.
    num_groups: GroupNorm groups.
    dtype: compute dtype.
    fast: the layers' hand-written gradients (see the module docstring).
    axes: the spatial axes attended over, counted from 1 (x's axis numbers); None: all of them
      (the H*W positions of an image, the L of a 1-D signal).
    epsilon: the GroupNorm's epsilon.
    implementation: `jax.nn.dot_product_attention`'s: None (JAX's default, XLA's today),
      "xla", or "cudnn" (cuDNN's fused attention: a GPU, float16 / bfloat16 compute).
  """
  num_heads: int
  num_groups: int
  dtype: Dtype = jnp.float32
  fast: bool = True
  axes: Optional[Sequence[int]] = None
  epsilon: float = 1e-6
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    """x `[B, *spatial, C]` -> `[B, *spatial, C]`."""
    c = x.shape[-1]
    spatial = tuple(range(1, x.ndim - 1))
    axes = spatial if self.axes is None else tuple(self.axes)
    others = tuple(a for a in spatial if a not in axes)
    h = GroupNorm(self.num_groups, self.epsilon, dtype=self.dtype, fast=self.fast,
                  name="norm")(x)
    qkv = Dense(3 * c, dtype=self.dtype, fast=self.fast, name="qkv")(h)
    # [B, *others, *axes, 3C]: the attended positions last but the channels.
    order = (0, *others, *axes, x.ndim - 1)
    qkv = qkv.transpose(order)
    moved = qkv.shape
    length = math.prod(x.shape[a] for a in axes)
    qkv = qkv.reshape(-1, length, 3, self.num_heads, c // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # each [B', L, heads, C / heads]
    h = jax.nn.dot_product_attention(q, k, v, implementation=self.implementation)
    h = h.reshape(*moved[:-1], c)
    h = h.transpose(tuple(int(i) for i in np.argsort(order)))  # back to x's layout
    h = Dense(c, dtype=self.dtype, kernel_init=zeros_init, fast=self.fast, name="proj_out")(h)
    return x + h


class SpaceTimeAttention(nn.Module):
  """Factorized attention for video `[B, T, H, W, C]` (Ho et al. 2022, "Video Diffusion
  Models", sec. 3): attention over the H*W positions of each frame ("space"), then over the T
  frames at each position ("time"), each an `AttentionBlock` with its own residual connection.
  The cost is T * (HW)^2 + HW * T^2 instead of (THW)^2: linear in the number of frames.

  Attributes: those of `AttentionBlock` (its `axes` are fixed here).
  """
  num_heads: int
  num_groups: int
  dtype: Dtype = jnp.float32
  fast: bool = True
  epsilon: float = 1e-6
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x):
    """x `[B, T, H, W, C]` -> `[B, T, H, W, C]`."""
    block = lambda axes, name: AttentionBlock(self.num_heads, self.num_groups, self.dtype,
                                              self.fast, axes=axes, epsilon=self.epsilon,
                                              implementation=self.implementation, name=name)
    return block((1,), "time")(block((2, 3), "space")(x))


# Downsample's padding of a strided axis: 1 before and after (DDPM, ADM), or none before and 1
# after (LDM's autoencoder, and so diffusers' AutoencoderKL: `downsample_padding=0`).
DOWNSAMPLE_PADDINGS = {"symmetric": (1, 1), "asymmetric": (0, 1)}


class Downsample(nn.Module):
  """Halves the size of the spatial axes `axes` (default: all) with a stride-2 3x3 conv (DDPM
  `resamp_with_conv`); axes not in `axes` (a video's time) keep their size, stride 1.

  `padding` "asymmetric" pads a strided axis by (0, 1) instead of (1, 1) (LDM's and diffusers'
  VAE): the same parameters and output size, a window shifted by one pixel. Images and 1-D
  signals only; a video's (2+1)-D convolution pads symmetrically.
  """
  dtype: Dtype = jnp.float32
  fast: bool = True
  axes: Optional[Sequence[int]] = None
  padding: str = "symmetric"

  @nn.compact
  def __call__(self, x):
    """x `[B, H, W, C]` -> `[B, H/2, W/2, C]` (and likewise for other ranks)."""
    spatial = range(1, x.ndim - 1)
    axes = spatial if self.axes is None else self.axes
    strides = tuple(2 if a in axes else 1 for a in spatial)
    if self.padding == "symmetric":
      return conv3x3(x.shape[-1], self.dtype, fast=self.fast, name="conv", strides=strides,
                     ndim=x.ndim - 2)(x)
    if self.padding not in DOWNSAMPLE_PADDINGS or x.ndim == 5:
      raise ValueError(f"downsample padding {self.padding!r} is not supported here; choose one "
                       f"of {sorted(DOWNSAMPLE_PADDINGS)} ('symmetric' for video)")
    padding = tuple(DOWNSAMPLE_PADDINGS[self.padding if s == 2 else "symmetric"]
                    for s in strides)
    return Conv(x.shape[-1], (3,) * (x.ndim - 2), strides=strides, padding=padding,
                dtype=self.dtype, fast=self.fast, name="conv")(x)


class Upsample(nn.Module):
  """Doubles the size of the spatial axes `axes` (default: all): nearest-neighbour upsampling
  followed by a 3x3 conv."""
  dtype: Dtype = jnp.float32
  fast: bool = True
  axes: Optional[Sequence[int]] = None

  @nn.compact
  def __call__(self, x):
    """x `[B, H, W, C]` -> `[B, 2H, 2W, C]` (and likewise for other ranks)."""
    axes = range(1, x.ndim - 1) if self.axes is None else self.axes
    for axis in axes:
      x = jnp.repeat(x, 2, axis=axis)
    return conv3x3(x.shape[-1], self.dtype, fast=self.fast, name="conv", ndim=x.ndim - 2)(x)
