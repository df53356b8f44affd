"""The DDPM / ADM U-Net (Ho et al. 2020, appendix B; Dhariwal & Nichol 2021, sec. 3).

Layout, for `channel_mult = (m_0, ..., m_{L-1})` and `c = base_channels`:

  t -> sinusoidal(c) -> Dense(4c) -> SiLU -> Dense(4c) = emb  (+ Embed(label) if conditional)
  x -> conv3x3(c)
  down level i: num_res_blocks x [ResBlock(c * m_i) (+ attention)], then a stride-2 conv
                (not after the last level); every block's output is kept as a skip
  middle:       ResBlock, attention, ResBlock
  up level i:   num_res_blocks + 1 x [concat(skip), ResBlock(c * m_i) (+ attention)], then
                nearest upsampling + conv (not after level 0)
  out:          GroupNorm, SiLU, conv3x3 (zero-initialised) to the input channel count

Attention is used at the levels whose resolution in pixels is in `attention_resolutions`.
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffax.models import layers

Dtype = Any


class UNet(nn.Module):
  """A U-Net noise-prediction network `(x_t, t, cond) -> prediction` shaped like x_t.

  Attributes:
    base_channels: channels of the first level; the time embedding is 4x this.
    channel_mult: per-level channel multipliers; the number of levels is its length.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: resolutions in pixels (e.g. 16 for 16x16) that get self-attention.
    num_heads: attention heads.
    dropout: dropout rate inside the residual blocks.
    num_groups: GroupNorm groups.
    num_classes: 0 for an unconditional model; k > 0 adds a k + 1 row label embedding whose
      row k is the null label of classifier-free guidance.
    scale_shift: ADM scale-shift time injection (True) or DDPM additive injection (False).
    dtype: compute dtype; parameters stay float32 and the output is float32.
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

  @nn.compact
  def __call__(self, x, t, cond=None, *, train: bool = False):
    """Predicts eps (or x0, or v) from a noisy image.

    Args:
      x: noisy images, `[B, H, W, C]`.
      t: timesteps, `[B]` (or a scalar, broadcast).
      cond: labels `i32[B]` in [0, num_classes], or None; on a conditional model None means
        the null label num_classes. Must be None on an unconditional model.
      train: enables dropout (needs a 'dropout' rng).

    Returns:
      `f32[B, H, W, C]`.
    """
    batch = x.shape[0]
    dt = self.dtype
    res_block = lambda ch, name: layers.ResBlock(
        ch, self.num_groups, self.dropout, self.scale_shift, dt, name=name)
    attn_block = lambda name: layers.AttentionBlock(self.num_heads, self.num_groups, dt, name=name)

    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    emb_dim = 4 * self.base_channels
    emb = layers.timestep_embedding(t, self.base_channels).astype(dt)  # [B, base]
    emb = layers.Dense(emb_dim, dtype=dt, kernel_init=layers.default_init, name="temb_dense0")(emb)
    emb = layers.Dense(emb_dim, dtype=dt, kernel_init=layers.default_init,
                   name="temb_dense1")(nn.silu(emb))  # [B, 4 base]
    if self.num_classes:
      if cond is None:
        cond = jnp.full((batch,), self.num_classes, jnp.int32)
      cond = jnp.broadcast_to(jnp.asarray(cond), (batch,))
      emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=dt,
                           embedding_init=nn.initializers.normal(1.0), name="label_embed")(cond)
    elif cond is not None:
      raise ValueError("cond was given to an unconditional model (config.model.num_classes=0); "
                       "pass cond=None or set config.model.num_classes > 0")

    h = layers.conv3x3(self.base_channels, dt, name="conv_in")(x.astype(dt))
    skips = [h]
    num_levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult, f"down_{level}_res_{i}")(h, emb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attn_block(f"down_{level}_attn_{i}")(h)
        skips.append(h)
      if level != num_levels - 1:
        h = layers.Downsample(dt, name=f"down_{level}_downsample")(h)
        skips.append(h)

    h = res_block(h.shape[-1], "mid_res_0")(h, emb, train=train)
    h = attn_block("mid_attn")(h)
    h = res_block(h.shape[-1], "mid_res_1")(h, emb, train=train)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.base_channels * mult, f"up_{level}_res_{i}")(h, emb, train=train)
        if h.shape[1] in self.attention_resolutions:
          h = attn_block(f"up_{level}_attn_{i}")(h)
      if level != 0:
        h = layers.Upsample(dt, name=f"up_{level}_upsample")(h)
    assert not skips, len(skips)

    h = nn.silu(layers.GroupNorm(self.num_groups, dtype=dt, name="norm_out")(h))
    h = layers.conv3x3(x.shape[-1], dt, name="conv_out", zero=True)(h)
    return h.astype(jnp.float32)


def validate(config) -> None:
  """Checks that config.model and config.data describe a buildable U-Net.

  Raises:
    ValueError: naming the offending field, when the image size is not divisible by the total
      downsampling, num_groups does not divide a channel count, num_heads does not divide the
      channels of an attention level, an attention resolution is never reached, or a size is
      out of range.
  """
  m, d = config.model, config.data
  mult = tuple(m.channel_mult)
  if not mult or any(int(k) < 1 for k in mult):
    raise ValueError(f"config.model.channel_mult must be a non-empty tuple of positive ints, "
                     f"got {mult}")
  for field in ("base_channels", "num_res_blocks", "num_heads", "num_groups"):
    if int(m[field]) < 1:
      raise ValueError(f"config.model.{field} must be >= 1, got {m[field]}")
  if d.image_size < 1 or d.channels < 1:
    raise ValueError(f"config.data.image_size and config.data.channels must be >= 1, got "
                     f"{d.image_size} and {d.channels}")
  factor = 2 ** (len(mult) - 1)
  if d.image_size % factor:
    raise ValueError(
        f"config.data.image_size={d.image_size} must be divisible by 2**(len(channel_mult)-1)"
        f"={factor} (config.model.channel_mult={mult} downsamples {len(mult) - 1} times)")
  channels = sorted({m.base_channels} | {m.base_channels * k for k in mult})
  bad = [c for c in channels if c % m.num_groups]
  if bad:
    raise ValueError(f"config.model.num_groups={m.num_groups} must divide every channel count of "
                     f"the network {channels}; it does not divide {bad}")
  resolutions = [d.image_size // 2**i for i in range(len(mult))]
  unreached = [r for r in m.attention_resolutions if r not in resolutions]
  if unreached:
    raise ValueError(f"config.model.attention_resolutions={tuple(m.attention_resolutions)} holds "
                     f"{unreached}, not reached by the network; its resolutions are "
                     f"{resolutions} (from config.data.image_size={d.image_size} and "
                     f"config.model.channel_mult={mult})")
  attn_channels = {m.base_channels * mult[-1]} | {
      m.base_channels * k for k, r in zip(mult, resolutions) if r in m.attention_resolutions}
  bad = sorted(c for c in attn_channels if c % m.num_heads)
  if bad:
    raise ValueError(f"config.model.num_heads={m.num_heads} must divide the channels of every "
                     f"attention level; it does not divide {bad}")
  if not 0.0 <= m.dropout < 1.0:
    raise ValueError(f"config.model.dropout must lie in [0, 1), got {m.dropout}")
  if m.num_classes < 0:
    raise ValueError(f"config.model.num_classes must be >= 0, got {m.num_classes}")


def from_config(config, dtype: Optional[Dtype] = None) -> UNet:
  """Builds a `UNet` from config.model (validated against config.data first).

  Args:
    config: a diffax config (configs/common.py). `config.model.scale_shift` is optional
      (default True, ADM); the DDPM presets set it False.
    dtype: compute dtype; default float32.

  Returns:
    The (unbound) module.
  """
  validate(config)
  m = config.model
  return UNet(
      base_channels=int(m.base_channels),
      channel_mult=tuple(int(k) for k in m.channel_mult),
      num_res_blocks=int(m.num_res_blocks),
      attention_resolutions=tuple(int(r) for r in m.attention_resolutions),
      num_heads=int(m.num_heads),
      dropout=float(m.dropout),
      num_groups=int(m.num_groups),
      num_classes=int(m.num_classes),
      scale_shift=bool(m.get("scale_shift", True)),
      dtype=dtype or jnp.float32,
  )
