"""The KL-regularized convolutional autoencoder of latent diffusion (Rombach et al. 2022, sec. 3
and appendix G; the `AutoencoderKL` of their code and of Stable Diffusion).

  ae = diffax.models.create_autoencoder(sample_shape=(28, 28, 1), base_channels=64,
                                        channel_mult=(1, 2, 4), latent_channels=4)
  params = ae.init_fn(jax.random.key(0))
  mean, logvar = ae.encode(params, x)            # [B, 28, 28, 1] -> [B, 7, 7, 4] each
  z = mean + jnp.exp(0.5 * logvar) * noise       # a draw of the posterior q(z | x)
  x_rec = ae.decode(params, z)                   # [B, 7, 7, 4] -> [B, 28, 28, 1]

Layout, for `channel_mult = (m_0, ..., m_{L-1})`, `c = base_channels`, f = 2^(L-1):

  encoder: conv3x3(c); level i: num_res_blocks x ResnetBlock(c * m_i), then a stride-2 conv
           (not after the last level); middle: ResnetBlock, attention (`mid_attention`),
           ResnetBlock; GroupNorm, SiLU, conv3x3(2z); 1x1 conv ("quant_conv") -> mean, logvar
  decoder: 1x1 conv ("post_quant_conv"); conv3x3(c * m_{L-1}); the same middle; level i from
           the last: num_res_blocks + 1 x ResnetBlock(c * m_i), then nearest upsampling + conv
           (not after level 0); GroupNorm, SiLU, conv3x3 to the image channels

The stride-2 conv pads 1 on each side by default; `downsample_padding="asymmetric"` pads (0, 1)
as LDM's code does, and so Stable Diffusion's VAE (`diffax.interop.autoencoder_from_diffusers`
loads those weights). `quant_conv=False` drops both 1x1 convs (diffusers' `use_quant_conv` /
`use_post_quant_conv`).

A ResnetBlock is the U-Net's residual block without a time embedding: GN, SiLU, conv3x3, GN,
SiLU, dropout, conv3x3, plus the input (through a 1x1 projection when channels change). The
decoder's output is not squashed (LDM's is not either); the log-variance is clipped to
[-30, 20] as in LDM's `DiagonalGaussianDistribution`.

The layers are `diffax.models.layers`' (hand-written gradients on CPU with `fast`, the same
parameters and values either way). Arguments are keywords and arrays; a bad value raises
ValueError naming the keyword.
"""

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.models import layers

Dtype = Any

# LDM clips the log-variance before exponentiating it.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class ResnetBlock(nn.Module):
  """The autoencoder's residual block: no time embedding.

  Attributes:
    features: output channels.
    num_groups: GroupNorm groups.
    dropout: dropout rate before the last conv.
    dtype: compute dtype.
    fast: the layers' hand-written gradients.
  """
  features: int
  num_groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  fast: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x `[B, H, W, C_in]` -> `[B, H, W, features]`."""
    dt, fast = self.dtype, self.fast
    h = layers.GroupNorm(self.num_groups, dtype=dt, fast=fast, name="norm1")(x)
    h = layers.conv3x3(self.features, dt, fast=fast, name="conv1")(nn.silu(h))
    h = layers.GroupNorm(self.num_groups, dtype=dt, fast=fast, name="norm2")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = layers.conv3x3(self.features, dt, fast=fast, name="conv2")(h)
    if x.shape[-1] != self.features:
      x = layers.Dense(self.features, dtype=dt, fast=fast, name="skip")(x)
    return x + h


class _Middle(nn.Module):
  """ResnetBlock, optional self-attention, ResnetBlock at the lowest resolution."""
  num_groups: int
  attention: bool
  dropout: float
  dtype: Dtype
  fast: bool

  @nn.compact
  def __call__(self, h, *, train: bool):
    block = lambda name: ResnetBlock(h.shape[-1], self.num_groups, self.dropout, self.dtype,
                                     self.fast, name=name)
    h = block("res_0")(h, train=train)
    if self.attention:
      h = layers.AttentionBlock(num_heads=1, num_groups=self.num_groups, dtype=self.dtype,
                                fast=self.fast, name="attn")(h)
    return block("res_1")(h, train=train)


class Encoder(nn.Module):
  """Images `[B, H, W, C]` -> (mean, logvar) of q(z | x), each `f32[B, H/f, W/f, z]`."""
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  mid_attention: bool
  num_groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  fast: bool = True
  downsample_padding: str = "symmetric"
  quant_conv: bool = True

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    dt, fast = self.dtype, self.fast
    h = layers.conv3x3(self.base_channels, dt, fast=fast, name="conv_in")(x.astype(dt))
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = ResnetBlock(self.base_channels * mult, self.num_groups, self.dropout, dt, fast,
                        name=f"down_{level}_res_{i}")(h, train=train)
      if level != len(self.channel_mult) - 1:
        h = layers.Downsample(dt, fast, padding=self.downsample_padding,
                              name=f"down_{level}_downsample")(h)
    h = _Middle(self.num_groups, self.mid_attention, self.dropout, dt, fast, name="mid")(
        h, train=train)
    h = nn.silu(layers.GroupNorm(self.num_groups, dtype=dt, fast=fast, name="norm_out")(h))
    h = layers.conv3x3(2 * self.latent_channels, dt, fast=fast, name="conv_out")(h)
    if self.quant_conv:
      h = layers.Dense(2 * self.latent_channels, dtype=dt, fast=fast, name="quant_conv")(h)
    moments = h.astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


class Decoder(nn.Module):
  """Latents `[B, h, w, z]` -> images `f32[B, h*f, w*f, C]`.

  With `features=True` it returns the input of its last conv ("conv_out") instead,
  `[B, H, W, c * m_0]`: the GAN's adaptive weight differentiates through that layer alone.
  """
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  out_channels: int
  mid_attention: bool
  num_groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  fast: bool = True
  quant_conv: bool = True

  @nn.compact
  def __call__(self, z, *, train: bool = False, features: bool = False):
    dt, fast = self.dtype, self.fast
    h = z.astype(dt)
    if self.quant_conv:
      h = layers.Dense(z.shape[-1], dtype=dt, fast=fast, name="post_quant_conv")(h)
    top = self.base_channels * self.channel_mult[-1]
    h = layers.conv3x3(top, dt, fast=fast, name="conv_in")(h)
    h = _Middle(self.num_groups, self.mid_attention, self.dropout, dt, fast, name="mid")(
        h, train=train)
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = ResnetBlock(self.base_channels * mult, self.num_groups, self.dropout, dt, fast,
                        name=f"up_{level}_res_{i}")(h, train=train)
      if level != 0:
        h = layers.Upsample(dt, fast, name=f"up_{level}_upsample")(h)
    h = nn.silu(layers.GroupNorm(self.num_groups, dtype=dt, fast=fast, name="norm_out")(h))
    if features:
      return h
    return layers.conv3x3(self.out_channels, dt, fast=fast, name="conv_out")(h).astype(
        jnp.float32)


@dataclasses.dataclass(frozen=True)
class Autoencoder:
  """The autoencoder as pure functions of its params `{"encoder": ..., "decoder": ...}`.

  Attributes:
    init_fn: `init_fn(rng) -> params`.
    encode: `encode(params, x, *, train=False, rng=None) -> (mean, logvar)`, x
      `[B, *sample_shape]` in [-1, 1] -> `f32[B, *latent_shape]` each.
    decode: `decode(params, z, *, train=False, rng=None) -> x`, `[B, *latent_shape]` ->
      `f32[B, *sample_shape]`.
    decode_features: like decode, but returns the input of the decoder's last conv.
    decode_head: `decode_head(params, features) -> x`: that last conv; decode is
      `decode_head(params, decode_features(params, z))`.
    sample_shape: the image shape `(H, W, C)`.
    latent_shape: the latent shape `(H/f, W/f, latent_channels)`.
    factor: f, the downsampling factor 2^(len(channel_mult) - 1).
  """
  init_fn: Callable
  encode: Callable
  decode: Callable
  decode_features: Callable
  decode_head: Callable
  sample_shape: tuple
  latent_shape: tuple
  factor: int


def check(sample_shape, *, base_channels, channel_mult, num_res_blocks, latent_channels,
          num_groups, dropout, downsample_padding="symmetric") -> None:
  """Checks that the architecture fits `sample_shape` (H, W, C).

  Raises:
    ValueError: naming the keyword, when the image size is not divisible by f, num_groups does
      not divide a channel count, or a size is out of range.
  """
  if len(sample_shape) != 3 or min(sample_shape) < 1:
    raise ValueError(f"the autoencoder encodes images: sample_shape must be (H, W, C) of "
                     f"positive sizes, got {tuple(sample_shape)}")
  mult = tuple(channel_mult)
  if not mult or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                     for k in mult):
    raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {mult}")
  for name, value in (("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                      ("latent_channels", latent_channels), ("num_groups", num_groups)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  height, width, _ = sample_shape
  factor = 2 ** (len(mult) - 1)
  if height % factor or width % factor:
    raise ValueError(
        f"the image size {height}x{width} must be divisible by the downsampling factor "
        f"f=2**(len(channel_mult)-1)={factor} (channel_mult={mult}); choose a shorter "
        f"channel_mult")
  channels = sorted({base_channels * k for k in mult} | {base_channels})
  bad = [c for c in channels if c % num_groups]
  if bad:
    raise ValueError(f"num_groups={num_groups} must divide every channel count of the network "
                     f"{channels}; it does not divide {bad}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  if downsample_padding not in layers.DOWNSAMPLE_PADDINGS:
    raise ValueError(f"downsample_padding must be one of {sorted(layers.DOWNSAMPLE_PADDINGS)} "
                     f"('asymmetric': LDM's and diffusers' VAE), got {downsample_padding!r}")


def build(sample_shape, dtype, fast, *, base_channels: int = 64, channel_mult=(1, 2),
          num_res_blocks: int = 2, latent_channels: int = 4, mid_attention: bool = True,
          num_groups: int = 32, dropout: float = 0.0, downsample_padding: str = "symmetric",
          quant_conv: bool = True) -> Autoencoder:
  """The `Autoencoder` for images of `sample_shape` (`diffax.models.create_autoencoder`).

  Args:
    sample_shape: `(H, W, C)`; H and W divisible by f.
    dtype: the compute dtype (a numpy dtype); parameters and outputs are float32.
    fast: the hand-written-gradient layers.
    base_channels: channels of the first level.
    channel_mult: per-level multipliers; f = 2^(len(channel_mult) - 1).
    num_res_blocks: residual blocks per level (the decoder has one more).
    latent_channels: z, the channels of the latent.
    mid_attention: self-attention in the middle of encoder and decoder (LDM's default).
    num_groups: GroupNorm groups.
    dropout: dropout rate in the residual blocks (used when `train=True`, with an rng).
    downsample_padding: the stride-2 convs' padding, "symmetric" (1, 1) or "asymmetric" (0, 1)
      (LDM's and diffusers' AutoencoderKL).
    quant_conv: the 1x1 convs after the encoder and before the decoder ("quant_conv",
      "post_quant_conv").
  """
  sample_shape = tuple(int(d) for d in sample_shape)
  check(sample_shape, base_channels=base_channels, channel_mult=channel_mult,
        num_res_blocks=num_res_blocks, latent_channels=latent_channels, num_groups=num_groups,
        dropout=dropout, downsample_padding=downsample_padding)
  common = dict(base_channels=int(base_channels),
                channel_mult=tuple(int(k) for k in channel_mult),
                num_res_blocks=int(num_res_blocks), mid_attention=bool(mid_attention),
                num_groups=int(num_groups), dropout=float(dropout), dtype=dtype,
                fast=bool(fast), quant_conv=bool(quant_conv))
  encoder = Encoder(latent_channels=int(latent_channels), downsample_padding=downsample_padding,
                    **common)
  decoder = Decoder(out_channels=sample_shape[-1], **common)
  # The decoder's last conv on its own, applied to params["decoder"]["conv_out"].
  head = layers.conv3x3(sample_shape[-1], dtype, fast=bool(fast), name="conv_out")
  factor = 2 ** (len(common["channel_mult"]) - 1)
  latent_shape = (sample_shape[0] // factor, sample_shape[1] // factor, int(latent_channels))

  def check_input(name, x, shape):
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
      raise ValueError(f"{name} must be [B, {', '.join(map(str, shape))}], got shape "
                       f"{tuple(x.shape)}")

  def rngs(train, rng):
    if train and common["dropout"] > 0 and rng is None:
      raise ValueError(f"train=True with dropout={common['dropout']} needs an rng")
    return {"dropout": rng} if rng is not None else {}

  def init_fn(rng: jax.Array):
    enc_rng, dec_rng = jax.random.split(rng)
    x = jnp.zeros((1, *sample_shape), jnp.float32)
    z = jnp.zeros((1, *latent_shape), jnp.float32)
    return {"encoder": encoder.init({"params": enc_rng}, x)["params"],
            "decoder": decoder.init({"params": dec_rng}, z)["params"]}

  def encode(params, x, *, train: bool = False, rng: Optional[jax.Array] = None):
    check_input("x", x, sample_shape)
    return encoder.apply({"params": params["encoder"]}, x, train=train, rngs=rngs(train, rng))

  def decode_features(params, z, *, train: bool = False, rng: Optional[jax.Array] = None):
    check_input("z", z, latent_shape)
    return decoder.apply({"params": params["decoder"]}, z, train=train, features=True,
                         rngs=rngs(train, rng))

  def decode_head(params, features):
    out = head.apply({"params": params["decoder"]["conv_out"]}, features)
    return out.astype(jnp.float32)

  def decode(params, z, *, train: bool = False, rng: Optional[jax.Array] = None):
    check_input("z", z, latent_shape)
    return decoder.apply({"params": params["decoder"]}, z, train=train, rngs=rngs(train, rng))

  return Autoencoder(init_fn=init_fn, encode=encode, decode=decode,
                     decode_features=decode_features, decode_head=decode_head,
                     sample_shape=sample_shape, latent_shape=latent_shape, factor=factor)


class PatchDiscriminator(nn.Module):
  """The PatchGAN discriminator of pix2pix (Isola et al. 2017) that LDM's autoencoders train
  against: 4x4 convs, stride 2 then 1, LeakyReLU(0.2); one logit per overlapping patch.

  LDM normalizes with BatchNorm; here GroupNorm, which keeps no running statistics (the
  training state is parameters alone).

  Attributes:
    base_channels: channels of the first conv; doubled per layer up to 8x.
    num_layers: stride-2 convs; each halves the resolution.
    num_groups: GroupNorm groups.
    fast: the layers' hand-written gradients.
  """
  base_channels: int = 64
  num_layers: int = 3
  num_groups: int = 32
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    """x `[B, H, W, C]` -> logits `f32[B, h, w, 1]`."""
    conv = lambda features, stride, name: layers.Conv(
        features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)), fast=self.fast,
        name=name)
    h = nn.leaky_relu(conv(self.base_channels, 2, "conv_0")(x.astype(jnp.float32)), 0.2)
    for i in range(1, self.num_layers + 1):
      features = self.base_channels * min(2**i, 8)
      h = conv(features, 2 if i < self.num_layers else 1, f"conv_{i}")(h)
      h = layers.GroupNorm(min(self.num_groups, features), fast=self.fast, name=f"norm_{i}")(h)
      h = nn.leaky_relu(h, 0.2)
    return conv(1, 1, "conv_out")(h)


@dataclasses.dataclass(frozen=True)
class Discriminator:
  """A discriminator as pure functions: `init_fn(rng) -> params`, `apply_fn(params, x) ->
  logits [B, h, w, 1]`."""
  init_fn: Callable
  apply_fn: Callable


def build_discriminator(sample_shape, fast, *, base_channels: int = 64, num_layers: int = 3,
                        num_groups: int = 32) -> Discriminator:
  """The `PatchDiscriminator` for images of `sample_shape` (H, W, C)
  (`diffax.models.create_discriminator`).

  Raises:
    ValueError: on a bad size, or an image too small for `num_layers` (no patch logit left).
  """
  for name, value in (("base_channels", base_channels), ("num_layers", num_layers),
                      ("num_groups", num_groups)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"discriminator {name} must be an int >= 1, got {value!r}")
  sample_shape = tuple(int(d) for d in sample_shape)
  widths = [base_channels * min(2**i, 8) for i in range(1, num_layers + 1)]
  bad = [w for w in widths if w % min(num_groups, w)]
  if bad:
    raise ValueError(f"the discriminator's GroupNorm groups, num_groups={num_groups}, must "
                     f"divide its channel counts {widths}; they do not divide {bad}")
  size = min(sample_shape[:2]) // 2**num_layers  # 4x4 stride-2 convs, padding 1: floor(s / 2)
  if size - 2 < 1:  # then two 4x4 stride-1 convs with padding 1 take one pixel each
    raise ValueError(f"the discriminator's num_layers={num_layers} leaves no patch of a "
                     f"{sample_shape[0]}x{sample_shape[1]} image; use fewer layers")
  module = PatchDiscriminator(int(base_channels), int(num_layers), int(num_groups), bool(fast))

  def init_fn(rng):
    return module.init({"params": rng}, jnp.zeros((1, *sample_shape), jnp.float32))["params"]

  def apply_fn(params, x):
    return module.apply({"params": params}, x)

  return Discriminator(init_fn=init_fn, apply_fn=apply_fn)
