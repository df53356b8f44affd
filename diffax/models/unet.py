"""The DDPM / ADM U-Net (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021, sec. 3), for
1-D signals, images and video.

Layout, for `channel_mult = (m_0, ..., m_{L-1})` and `c = base_channels`:

  t -> sinusoidal(c) -> Dense(4c) -> SiLU -> Dense(4c) = emb  (+ Embed(label) if conditional)
  x -> conv3x3(c)
  down level i: num_res_blocks x [ResBlock(c * m_i) (+ attention)], then a stride-2 conv
                (not after the last level); every block's output is kept as a skip
  middle:       ResBlock, attention, ResBlock
  up level i:   num_res_blocks + 1 x [concat(skip), ResBlock(c * m_i) (+ attention)], then
                nearest upsampling + conv (not after level 0)
  out:          GroupNorm, SiLU, conv3x3 (zero-initialised) to the input channel count

The rank of the sample shape picks the data (one module, the same parameter names):

  (L, C)        1-D signals (audio): convolutions 3 wide, attention over the L positions,
                down/upsampling halves/doubles L.
  (H, W, C)     images: 3x3 convolutions, attention over the H*W pixels, down/upsampling on
                both axes. The parameters are those of the original 2-D U-Net.
  (T, H, W, C)  video: (2+1)-D convolutions (`layers.FrameConv`: 3x3 within each frame, then
                3 frames along time; an image U-Net's conv parameters plus a temporal kernel
                that starts as the identity), factorized attention
                (`layers.SpaceTimeAttention`: over the H*W pixels of each frame, then over the
                T frames at each pixel; Ho et al. 2022), down/upsampling on H and W only: the
                T frames stay T frames at every level (as in Video Diffusion Models), so a
                short clip need not be divisible by anything. GroupNorm normalises each
                example over all its frames. Both factorizations keep the cost linear in T.

Attention is used at the levels whose *resolution* is in `attention_resolutions`; a level's
resolution is the size of its first resampled axis: the length L of a 1-D signal (e.g. 2048,
then 1024, ...), the height H of an image, the frame height H of a video (its T frames never
change). The middle block always has attention.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffax.models import layers

Dtype = Any


class UNet(nn.Module):
  """A U-Net noise-prediction network `(x_t, t, cond) -> prediction` shaped like x_t.

  Attributes:
    base_channels: channels of the first level; the time embedding is 4x this.
    channel_mult: per-level channel multipliers; the number of levels is its length.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: level resolutions that get self-attention: the length (1-D), the
      height (images, e.g. 16 for 16x16) or the frame height (video) of the level's features.
    num_heads: attention heads.
    dropout: dropout rate inside the residual blocks.
    num_groups: GroupNorm groups.
    num_classes: 0 for an unconditional model; k > 0 reads `cond["label"]` through a k + 1 row
      label embedding whose row k is the null label of classifier-free guidance.
    scale_shift: ADM scale-shift time injection (True) or DDPM additive injection (False).
    dtype: compute dtype; parameters stay float32 and the output is float32.
    fast: the layers' hand-written gradients (`layers`); same parameters and values.
  """
  base_channels: int = 64
  channel_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = ()
  num_heads: int = 1
  dropout: float = 0.0
  num_groups: int = 32
  num_classes: int = 0
  scale_shift: bool = True
  dtype: Dtype = jnp.float32
  fast: bool = True

  @property
  def cond_keys(self) -> tuple:
    """The keys of `cond` this network reads."""
    return ("label",) if self.num_classes else ()

  @nn.compact
  def __call__(self, x, t, cond=None, *, train: bool = False):
    """Predicts eps (or x0, or v) from a noisy example.

    Args:
      x: noisy examples, `[B, L, C]`, `[B, H, W, C]` or `[B, T, H, W, C]`.
      t: timesteps, `[B]` (or a scalar, broadcast).
      cond: None or a dict; with num_classes, `cond["label"]` `i32[B]` in [0, num_classes]
        (absent: the null label num_classes).
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      f32, shaped like x.
    """
    batch = x.shape[0]
    dt, fast = self.dtype, self.fast
    ndim = x.ndim - 2
    axes = resampled_axes(ndim)
    cond = cond or {}
    res_block = lambda ch, name: layers.ResBlock(
        ch, self.num_groups, self.dropout, self.scale_shift, dt, fast, name=name)
    attention = layers.SpaceTimeAttention if ndim == 3 else layers.AttentionBlock
    attn_block = lambda name: attention(self.num_heads, self.num_groups, dt, fast, name=name)
    resolution = lambda h: h.shape[axes[0]]

    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    emb_dim = 4 * self.base_channels
    emb = layers.timestep_embedding(t, self.base_channels).astype(dt)  # [B, base]
    emb = layers.Dense(emb_dim, dtype=dt, fast=fast, name="temb_dense0")(emb)
    emb = layers.Dense(emb_dim, dtype=dt, fast=fast, name="temb_dense1")(nn.silu(emb))
    if self.num_classes:
      label = cond.get("label")
      if label is None:
        label = jnp.full((batch,), self.num_classes, jnp.int32)
      label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch,))
      emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=dt,
                           embedding_init=nn.initializers.normal(1.0), name="label_embed")(label)

    h = layers.conv3x3(self.base_channels, dt, fast=fast, name="conv_in", ndim=ndim)(
        x.astype(dt))
    skips = [h]
    num_levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult, f"down_{level}_res_{i}")(h, emb, train=train)
        if resolution(h) in self.attention_resolutions:
          h = attn_block(f"down_{level}_attn_{i}")(h)
        skips.append(h)
      if level != num_levels - 1:
        h = layers.Downsample(dt, fast, axes, name=f"down_{level}_downsample")(h)
        skips.append(h)

    h = res_block(h.shape[-1], "mid_res_0")(h, emb, train=train)
    h = attn_block("mid_attn")(h)
    h = res_block(h.shape[-1], "mid_res_1")(h, emb, train=train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.base_channels * mult, f"up_{level}_res_{i}")(h, emb, train=train)
        if resolution(h) in self.attention_resolutions:
          h = attn_block(f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = layers.Upsample(dt, fast, axes, name=f"up_{level}_upsample")(h)
    assert not skips, len(skips)

    h = nn.silu(layers.GroupNorm(self.num_groups, dtype=dt, fast=fast, name="norm_out")(h))
    h = layers.conv3x3(x.shape[-1], dt, fast=fast, name="conv_out", zero=True, ndim=ndim)(h)
    return h.astype(jnp.float32)


# The sample shapes the U-Net takes, by rank: what each axis is (for messages).
LAYOUTS = {2: "(L, C)", 3: "(H, W, C)", 4: "(T, H, W, C)"}


def resampled_axes(ndim: int) -> tuple:
  """The axes of `[B, *spatial, C]` that down/upsampling halves/doubles, for `ndim` spatial
  axes: every one, except a video's time axis (axis 1)."""
  return (2, 3) if ndim == 3 else tuple(range(1, ndim + 1))


def check(sample_shape, *, base_channels, channel_mult, num_res_blocks, attention_resolutions,
          num_heads, dropout, num_groups, num_classes, **_) -> None:
  """Checks that the architecture fits `sample_shape`: (L, C), (H, W, C) or (T, H, W, C).

  Raises:
    ValueError: naming the keyword, when a resampled size (L, or H and W) is not divisible by
      the total downsampling, num_groups does not divide a channel count, num_heads does not
      divide the channels of an attention level, an attention resolution is never reached, or
      a size is out of range.
  """
  sample_shape = tuple(sample_shape)
  if len(sample_shape) not in LAYOUTS or min(sample_shape) < 1:
    raise ValueError(f"sample_shape must be {' or '.join(LAYOUTS.values())} of positive sizes "
                     f"(1-D signals, images, video), got {sample_shape}")
  ndim = len(sample_shape) - 1
  sizes = [sample_shape[a - 1] for a in resampled_axes(ndim)]
  what = {1: "length L", 2: "image size HxW", 3: "frame size HxW"}[ndim]
  mult = tuple(channel_mult)
  if not mult or any(int(k) < 1 for k in mult):
    raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {mult}")
  for name, value in (("base_channels", base_channels), ("num_res_blocks", num_res_blocks),
                      ("num_heads", num_heads), ("num_groups", num_groups)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}")
  factor = 2 ** (len(mult) - 1)
  if any(size % factor for size in sizes):
    raise ValueError(
        f"the {what} {'x'.join(map(str, sizes))} must be divisible by 2**(len(channel_mult)-1)="
        f"{factor} (channel_mult={mult} downsamples {len(mult) - 1} times)")
  channels = sorted({base_channels} | {base_channels * k for k in mult})
  bad = [c for c in channels if c % num_groups]
  if bad:
    raise ValueError(f"num_groups={num_groups} must divide every channel count of the network "
                     f"{channels}; it does not divide {bad}")
  resolutions = [sizes[0] // 2**i for i in range(len(mult))]
  unreached = [r for r in attention_resolutions if r not in resolutions]
  if unreached:
    first = {1: "length", 2: "image height", 3: "frame height"}[ndim]
    raise ValueError(f"attention_resolutions={tuple(attention_resolutions)} holds {unreached}, "
                     f"not reached by the network; its resolutions are {resolutions} (from the "
                     f"{first} {sizes[0]} and channel_mult={mult})")
  attn_channels = {base_channels * mult[-1]} | {
      base_channels * k for k, r in zip(mult, resolutions) if r in attention_resolutions}
  bad = sorted(c for c in attn_channels if c % num_heads)
  if bad:
    raise ValueError(f"num_heads={num_heads} must divide the channels of every attention level; "
                     f"it does not divide {bad}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 0):
    raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")


def build(sample_shape, dtype, fast, *, base_channels=64, channel_mult=(1, 2), num_res_blocks=2,
          attention_resolutions=(), num_heads=1, dropout=0.0, num_groups=32, num_classes=0,
          scale_shift=True):
  """The `UNet` for `sample_shape` and its null condition (`diffax.models.create`).

  Returns:
    `(module, null_cond)`: the unbound module; `{"label": num_classes}` for a class-conditional
    network, else `{}`.
  """
  arch = dict(base_channels=base_channels, channel_mult=tuple(channel_mult),
              num_res_blocks=num_res_blocks, attention_resolutions=tuple(attention_resolutions),
              num_heads=num_heads, dropout=dropout, num_groups=num_groups,
              num_classes=num_classes)
  check(sample_shape, **arch)
  module = UNet(
      base_channels=int(base_channels),
      channel_mult=tuple(int(k) for k in channel_mult),
      num_res_blocks=int(num_res_blocks),
      attention_resolutions=tuple(int(r) for r in attention_resolutions),
      num_heads=int(num_heads),
      dropout=float(dropout),
      num_groups=int(num_groups),
      num_classes=int(num_classes),
      scale_shift=bool(scale_shift),
      dtype=dtype,
      fast=bool(fast),
  )
  null_cond = {"label": np.int32(num_classes)} if num_classes else {}
  return module, null_cond
