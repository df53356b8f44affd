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
change). The middle block has self-attention unless `mid_attention` is False.

Conditions beyond the class label (`diffax.conditioning`), each read in one delimited place;
both are for images (H, W, C):
  context       with `context_dim` > 0, a `attention.SpatialTransformer` (Stable Diffusion's
                cross-attention block) follows the blocks of the levels in
                `cross_attention_resolutions` and the middle attention, reading
                `cond["context"]` / `cond["context_mask"]`; the null condition is a sequence
                with no real token.
  embedding     with `embedding_dim` > 0 (unCLIP's decoder, DALL-E 2 2.1), `cond["embedding"]`
                `[B, E]` (a CLIP image embedding) is projected into the time embedding and,
                with `embedding_tokens` = n > 0, into n extra context tokens that the
                cross-attention blocks read after the text tokens (if any; without text they
                are the whole context, of width 4 * base_channels); the null condition is
                the zero embedding.
  low_res       with `low_res_size` > 0 (super-resolution, SR3), `cond["low_res"]`, bicubic-
                upsampled to the sample size, is concatenated to x_t before conv_in, and
                `cond["noise_level"]` (Imagen's noise-conditioning augmentation) is embedded
                and added to the time embedding (`low_res`).

How it computes, without changing the parameters or the function:
  remat           activation checkpointing of each residual, attention and cross-attention
                  block under differentiation (`REMAT_POLICIES`): "none" keeps every
                  activation for the backward pass; "blocks" keeps only each block's inputs and
                  recomputes the rest; "dots" also keeps the outputs of its matmuls and
                  convolutions (recomputing norms and activations only). Less memory for a
                  training step, more compute; no effect on sampling (nothing is
                  differentiated). It composes with the layers' hand-written gradients
                  (`fast`): their forward passes run again inside the backward pass. Blocks
                  are checkpointed by `remat.call` (so that XLA:CPU honours it too): a custom
                  VJP, so a network with remat is differentiated in reverse mode only.
  attention_impl  how attention is computed (`ATTENTION_IMPLS`): "xla" (the default: self-
                  and cross-attention through `jax.nn.dot_product_attention(implementation=
                  "xla")`), "cudnn" (its cuDNN fused kernel: a GPU, float16 / bfloat16
                  compute), "diffax" (cross-attention through `attention.multi_head_attention`'s
                  einsums, as before "xla" was measured 10 % faster at sampling a text model on
                  CPU and as fast at training it; benchmarks/README.md).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffax.models import attention
from diffax.models import layers
from diffax.models import low_res as low_res_lib
from diffax.models import remat as remat_lib

Dtype = Any

# remat -> the `jax.checkpoint` policy of each block: what it keeps for the backward pass
# ("none": no checkpointing, autodiff keeps everything).
REMAT_POLICIES = {
    "none": None,
    "blocks": jax.checkpoint_policies.nothing_saveable,  # the block's inputs only
    "dots": jax.checkpoint_policies.dots_saveable,  # and its matmul and convolution outputs
}

# attention_impl -> `jax.nn.dot_product_attention`'s `implementation` (None: self-attention
# through JAX's default, XLA's; cross-attention through `attention.multi_head_attention`'s
# einsums).
ATTENTION_IMPLS = {"diffax": None, "xla": "xla", "cudnn": "cudnn"}


def check_compute(remat: str, attention_impl: str, dtype) -> None:
  """Checks the keywords of how the U-Net computes (module docstring).

  Raises:
    ValueError: naming the keyword and its choices; "cudnn" attention in float32 (cuDNN's
      fused attention takes bfloat16 / float16) or off a GPU backend.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat={remat!r} is unknown; choose one of {list(REMAT_POLICIES)}")
  if attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={attention_impl!r} is unknown; choose one of "
                     f"{list(ATTENTION_IMPLS)}")
  if attention_impl == "cudnn" and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention_impl='cudnn' computes in bfloat16 or float16, not "
                     f"{jnp.dtype(dtype).name}: set dtype='bfloat16' or attention_impl='xla'")
  if attention_impl == "cudnn" and jax.default_backend() != "gpu":
    raise ValueError(f"attention_impl='cudnn' is cuDNN's fused attention, GPU only; this "
                     f"backend is {jax.default_backend()}: choose 'xla' or 'diffax'")


class UNet(nn.Module):
  """A U-Net noise-prediction network `(x_t, t, cond) -> prediction` shaped like x_t.

  Attributes:
    base_channels: channels of the first level; the time embedding is 4x this.
    channel_mult: per-level channel multipliers; the number of levels is its length.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: level resolutions that get self-attention: the length (1-D), the
      height (images, e.g. 16 for 16x16) or the frame height (video) of the level's features.
    num_heads: attention heads (at every attention level).
    head_channels: 0, or d: each attention level has channels / d heads of d channels
      (Stable Diffusion 2's layout), instead of num_heads.
    dropout: dropout rate inside the residual blocks.
    num_groups: GroupNorm groups.
    norm_eps: the GroupNorm epsilon of the residual blocks, self-attention and the output
      (the cross-attention transformers keep 1e-6, as Stable Diffusion's do).
    time_embedding: the sinusoidal timestep embedding, "ddpm" or "adm"
      (`layers.timestep_embedding`; Stable Diffusion's is "adm").
    mid_attention: self-attention in the middle block (Stable Diffusion's middle block has
      only its cross-attention transformer: False).
    num_classes: 0 for an unconditional model; k > 0 reads `cond["label"]` through a k + 1 row
      label embedding whose row k is the null label of classifier-free guidance.
    scale_shift: ADM scale-shift time injection (True) or DDPM additive injection (False).
    context_dim: 0, or D: the model reads `cond["context"]` `[B, L, D]` through cross-attention.
    cross_attention_resolutions: resolutions in pixels whose blocks are followed by a
      cross-attention transformer (the middle block always has one when context_dim > 0).
    transformer_depth: transformer blocks per cross-attention transformer.
    embedding_dim: 0, or E: the model reads `cond["embedding"]` `f32[B, E]` (module docstring).
    embedding_tokens: extra context tokens projected from the embedding (needs embedding_dim).
    low_res_size: 0, or h: a super-resolution model reading `cond["low_res"]` `[B, h, w, C]`
      (w = W * h / H) and `cond["noise_level"]` `f32[B]` (absent: 0).
    dtype: compute dtype; parameters stay float32 and the output is float32.
    fast: the layers' hand-written gradients (`layers`); same parameters and values.
    remat: activation checkpointing per block, a key of `REMAT_POLICIES` (module docstring).
    attention_impl: how attention is computed, a key of `ATTENTION_IMPLS`.
  """
  base_channels: int = 64
  channel_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = ()
  num_heads: int = 1
  head_channels: int = 0
  dropout: float = 0.0
  num_groups: int = 32
  norm_eps: float = 1e-6
  time_embedding: str = "ddpm"
  mid_attention: bool = True
  num_classes: int = 0
  scale_shift: bool = True
  context_dim: int = 0
  cross_attention_resolutions: Sequence[int] = ()
  transformer_depth: int = 1
  embedding_dim: int = 0
  embedding_tokens: int = 0
  low_res_size: int = 0
  dtype: Dtype = jnp.float32
  fast: bool = True
  remat: str = "none"
  attention_impl: str = "xla"

  @property
  def cond_keys(self) -> tuple:
    """The keys of `cond` this network reads."""
    return (("label",) * bool(self.num_classes)
            + ("context", "context_mask") * bool(self.context_dim)
            + ("embedding",) * bool(self.embedding_dim)
            + ("low_res", "noise_level") * bool(self.low_res_size))

  def heads(self, channels: int) -> int:
    """The attention heads of a level with `channels` channels."""
    return channels // self.head_channels if self.head_channels else self.num_heads

  @property
  def cross_attends(self) -> bool:
    """Whether the network has cross-attention blocks: text, or embedding tokens."""
    return bool(self.context_dim or self.embedding_tokens)

  def init_cond(self, sample_shape) -> dict | None:
    """A batch-1 cond with every key the network reads (zeros), for `init`."""
    cond = {}
    if self.num_classes:
      cond["label"] = jnp.full((1,), self.num_classes, jnp.int32)
    if self.context_dim:
      cond["context"] = jnp.zeros((1, 1, self.context_dim), jnp.float32)
      cond["context_mask"] = jnp.zeros((1, 1), bool)
    if self.embedding_dim:
      cond["embedding"] = jnp.zeros((1, self.embedding_dim), jnp.float32)
    if self.low_res_size:
      cond["low_res"] = jnp.zeros((1, *low_res_lib.low_res_shape(sample_shape,
                                                                  self.low_res_size)))
      cond["noise_level"] = jnp.zeros((1,), jnp.float32)
    return cond or None

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
    check_compute(self.remat, self.attention_impl, self.dtype)
    impl = ATTENTION_IMPLS[self.attention_impl]
    policy = REMAT_POLICIES[self.remat]
    # Calls a block, checkpointed per `remat`. (`emb`: the time embedding, computed below.)
    run = lambda block, *args, **static: block(*args, **static) if policy is None else (
        remat_lib.call(block, *args, policy=policy, **static))
    res_block = lambda ch, name, h: run(layers.ResBlock(
        ch, self.num_groups, self.dropout, self.scale_shift, dt, fast, epsilon=self.norm_eps,
        name=name), h, emb, train=train)
    self_attention = layers.SpaceTimeAttention if ndim == 3 else layers.AttentionBlock
    attn_block = lambda name, h: run(self_attention(
        self.heads(h.shape[-1]), self.num_groups, dt, fast, epsilon=self.norm_eps,
        implementation=impl, name=name), h)
    resolution = lambda h: h.shape[axes[0]]
    emb_dim = 4 * self.base_channels
    # --- cond["context"]: cross-attention (see the module docstring) ---
    context, context_mask = self._context(cond, batch)
    # --- cond["embedding"]: unCLIP's image embedding (tokens here, time embedding below) ---
    embedding = self._embedding(cond, batch)
    if self.embedding_tokens:
      width = self.context_dim or emb_dim
      tokens = layers.Dense(self.embedding_tokens * width, dtype=dt, fast=fast,
                            name="embedding_tokens")(embedding.astype(dt))
      tokens = tokens.reshape(batch, self.embedding_tokens, width)
      token_mask = jnp.ones((batch, self.embedding_tokens), bool)
      if context is None:
        context, context_mask = tokens, token_mask
      else:
        context = jnp.concatenate([context.astype(dt), tokens], axis=1)
        context_mask = jnp.concatenate([context_mask, token_mask], axis=1)
    cross = lambda name, h: run(attention.SpatialTransformer(
        self.heads(h.shape[-1]), self.num_groups, self.transformer_depth, dt, fast,
        implementation=impl, name=name), h, context, context_mask)
    cross_at = lambda h: self.cross_attends and resolution(h) in self.cross_attention_resolutions

    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    emb = layers.timestep_embedding(t, self.base_channels, form=self.time_embedding).astype(dt)
    emb = layers.Dense(emb_dim, dtype=dt, fast=fast, name="temb_dense0")(emb)
    emb = layers.Dense(emb_dim, dtype=dt, fast=fast, name="temb_dense1")(nn.silu(emb))
    if self.num_classes:
      label = cond.get("label")
      if label is None:
        label = jnp.full((batch,), self.num_classes, jnp.int32)
      label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (batch,))
      emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=dt,
                           embedding_init=nn.initializers.normal(1.0), name="label_embed")(label)
    if self.embedding_dim:
      emb = emb + layers.Dense(emb_dim, dtype=dt, fast=fast, name="embedding_proj")(
          embedding.astype(dt))
    h = x.astype(dt)
    # --- cond["low_res"], cond["noise_level"]: super-resolution ---
    if self.low_res_size:
      low, level = self._low_res(cond, x.shape)
      emb = emb + low_res_lib.NoiseLevelEmbedding(emb_dim, dt, fast, name="noise_level_embed")(
          level)
      h = jnp.concatenate([h, low_res_lib.upsample(low, x.shape[1:-1]).astype(dt)], axis=-1)

    h = layers.conv3x3(self.base_channels, dt, fast=fast, name="conv_in", ndim=ndim)(h)
    skips = [h]
    num_levels = len(self.channel_mult)
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult, f"down_{level}_res_{i}", h)
        if resolution(h) in self.attention_resolutions:
          h = attn_block(f"down_{level}_attn_{i}", h)
        if cross_at(h):
          h = cross(f"down_{level}_xattn_{i}", h)
        skips.append(h)
      if level != num_levels - 1:
        h = layers.Downsample(dt, fast, axes, name=f"down_{level}_downsample")(h)
        skips.append(h)

    h = res_block(h.shape[-1], "mid_res_0", h)
    if self.mid_attention:
      h = attn_block("mid_attn", h)
    if self.cross_attends:
      h = cross("mid_xattn", h)
    h = res_block(h.shape[-1], "mid_res_1", h)

    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.base_channels * mult, f"up_{level}_res_{i}", h)
        if resolution(h) in self.attention_resolutions:
          h = attn_block(f"up_{level}_attn_{i}", h)
        if cross_at(h):
          h = cross(f"up_{level}_xattn_{i}", h)
      if level != 0:
        h = layers.Upsample(dt, fast, axes, name=f"up_{level}_upsample")(h)
    assert not skips, len(skips)

    h = nn.silu(layers.GroupNorm(self.num_groups, self.norm_eps, dtype=dt, fast=fast,
                                 name="norm_out")(h))
    h = layers.conv3x3(x.shape[-1], dt, fast=fast, name="conv_out", zero=True, ndim=ndim)(h)
    return h.astype(jnp.float32)

  def _context(self, cond, batch):
    """`(context [B, L, D], mask bool[B, L])` of cond; absent: the null (no real token)."""
    if not self.context_dim:
      return None, None
    context = cond.get("context")
    if context is None:
      return (jnp.zeros((batch, 1, self.context_dim), self.dtype), jnp.zeros((batch, 1), bool))
    if context.ndim != 3 or context.shape[-1] != self.context_dim:
      raise ValueError(f"cond['context'] must be [B, L, {self.context_dim}] (the model's "
                       f"context_dim), got shape {tuple(context.shape)}")
    mask = cond.get("context_mask")
    mask = (jnp.ones(context.shape[:2], bool) if mask is None
            else jnp.broadcast_to(jnp.asarray(mask, bool), context.shape[:2]))
    return jnp.broadcast_to(context, (batch, *context.shape[1:])), mask

  def _embedding(self, cond, batch):
    """`cond["embedding"]` `[B, E]`; absent: the null (zeros); None for a model without one."""
    if not self.embedding_dim:
      return None
    e = cond.get("embedding")
    if e is None:
      return jnp.zeros((batch, self.embedding_dim), jnp.float32)
    if e.ndim != 2 or e.shape[-1] != self.embedding_dim:
      raise ValueError(f"cond['embedding'] must be [B, {self.embedding_dim}] (the model's "
                       f"embedding_dim), got shape {tuple(e.shape)}")
    return jnp.broadcast_to(e, (batch, self.embedding_dim))

  def _low_res(self, cond, x_shape):
    """`(low_res [B, h, w, C], noise_level f32[B])` of cond, checked against the model."""
    want = low_res_lib.low_res_shape(x_shape[1:], self.low_res_size)
    low = cond.get("low_res")
    if low is None or tuple(low.shape[1:]) != want:
      got = "none" if low is None else f"shape {tuple(low.shape)}"
      raise ValueError(f"a super-resolution model needs cond['low_res'] of shape [B, "
                       f"{', '.join(map(str, want))}] (low_res_size={self.low_res_size} for "
                       f"samples {'x'.join(map(str, x_shape[1:]))}), got {got}")
    level = cond.get("noise_level")
    level = jnp.zeros((x_shape[0],), jnp.float32) if level is None else level
    return low, jnp.broadcast_to(jnp.asarray(level, jnp.float32), (x_shape[0],))


# The sample shapes the U-Net takes, by rank: what each axis is (for messages).
LAYOUTS = {2: "(L, C)", 3: "(H, W, C)", 4: "(T, H, W, C)"}


def resampled_axes(ndim: int) -> tuple:
  """The axes of `[B, *spatial, C]` that down/upsampling halves/doubles, for `ndim` spatial
  axes: every one, except a video's time axis (axis 1)."""
  return (2, 3) if ndim == 3 else tuple(range(1, ndim + 1))


def _check_heads(num_heads, head_channels, channels, what) -> None:
  """num_heads, or head_channels when set, must divide the channels of every `what` level."""
  name, value = (("head_channels", head_channels) if head_channels
                 else ("num_heads", num_heads))
  bad = sorted(c for c in channels if c % value)
  if bad:
    raise ValueError(f"{name}={value} must divide the channels of every {what} level; it does "
                     f"not divide {bad}")


def check(sample_shape, *, base_channels, channel_mult, num_res_blocks, attention_resolutions,
          num_heads, dropout, num_groups, num_classes, head_channels=0, norm_eps=1e-6,
          time_embedding="ddpm", **_) -> None:
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
  _int("head_channels", head_channels, 0)
  attn_channels = {base_channels * mult[-1]} | {
      base_channels * k for k, r in zip(mult, resolutions) if r in attention_resolutions}
  _check_heads(num_heads, head_channels, attn_channels, "attention")
  if not (isinstance(norm_eps, (float, int)) and norm_eps > 0):
    raise ValueError(f"norm_eps must be a float > 0, got {norm_eps!r}")
  if time_embedding not in layers.TIME_EMBEDDINGS:
    raise ValueError(f"time_embedding={time_embedding!r} is unknown; choose one of "
                     f"{layers.TIME_EMBEDDINGS}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or (
      num_classes < 0):
    raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")


def _int(name, value, low):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_conditions(sample_shape, *, base_channels, channel_mult, num_heads, context_dim,
                     cross_attention_resolutions, transformer_depth, low_res_size,
                     embedding_dim=0, embedding_tokens=0, head_channels=0, **_) -> None:
  """Checks the text (cross-attention) and super-resolution keywords against the network.

  Raises:
    ValueError: naming the keyword: a cross-attention resolution the network never reaches or
      given without context_dim, num_heads not dividing a cross-attention level's channels, or
      a low_res_size that does not divide the image size into an integer factor > 1.
  """
  mult = tuple(channel_mult)
  _int("context_dim", context_dim, 0)
  _int("transformer_depth", transformer_depth, 1)
  _int("low_res_size", low_res_size, 0)
  _int("embedding_dim", embedding_dim, 0)
  _int("embedding_tokens", embedding_tokens, 0)
  if embedding_tokens and not embedding_dim:
    raise ValueError(f"embedding_tokens={embedding_tokens} needs embedding_dim > 0 (the width "
                     f"of the image embeddings the tokens are projected from)")
  cross_attends = context_dim or embedding_tokens
  if len(sample_shape) != 3:
    for name, value in (("context_dim", context_dim), ("low_res_size", low_res_size),
                        ("embedding_tokens", embedding_tokens)):
      if value:
        raise ValueError(f"{name}={value} conditions image models (H, W, C); the sample shape "
                         f"{tuple(sample_shape)} is {LAYOUTS.get(len(sample_shape), '?')}: set "
                         f"{name}=0")
    return
  height, width, _ = sample_shape
  resolutions = [height // 2**i for i in range(len(mult))]
  if cross_attention_resolutions and not cross_attends:
    raise ValueError(f"cross_attention_resolutions={tuple(cross_attention_resolutions)} needs "
                     f"context_dim > 0 (the width of the text encoder's token embeddings) or "
                     f"embedding_tokens > 0")
  unreached = [r for r in cross_attention_resolutions if r not in resolutions]
  if unreached:
    raise ValueError(f"cross_attention_resolutions={tuple(cross_attention_resolutions)} holds "
                     f"{unreached}, not reached by the network; its resolutions are "
                     f"{resolutions}")
  if cross_attends:
    channels = {base_channels * mult[-1]} | {
        base_channels * k for k, r in zip(mult, resolutions) if r in cross_attention_resolutions}
    _check_heads(num_heads, head_channels, channels, "cross-attention")
  if low_res_size:
    factor = height // low_res_size
    if height % low_res_size or factor < 2 or width % factor:
      raise ValueError(f"low_res_size={low_res_size} must divide the image size {height}x"
                       f"{width} by an integer factor >= 2 (e.g. {height // 2} for 2x "
                       f"super-resolution)")


def build(sample_shape, dtype, fast, *, base_channels=64, channel_mult=(1, 2), num_res_blocks=2,
          attention_resolutions=(), num_heads=1, head_channels=0, dropout=0.0, num_groups=32,
          norm_eps=1e-6, time_embedding="ddpm", mid_attention=True, num_classes=0,
          scale_shift=True, context_dim=0, cross_attention_resolutions=(), transformer_depth=1,
          embedding_dim=0, embedding_tokens=0, low_res_size=0, remat="none",
          attention_impl="xla"):
  """The `UNet` for `sample_shape` and its null condition (`diffax.models.create`).

  Returns:
    `(module, null_cond)`: the unbound module and the value of each droppable key when dropped:
    `{"label": num_classes}` for a class-conditional network; for a text-conditional one
    `{"context": zeros[1, context_dim], "context_mask": [False]}`, a sequence with no real
    token (`diffax.conditioning.nullify` repeats it to any length); `{}` for neither.
  """
  arch = dict(base_channels=base_channels, channel_mult=tuple(channel_mult),
              num_res_blocks=num_res_blocks, attention_resolutions=tuple(attention_resolutions),
              num_heads=num_heads, dropout=dropout, num_groups=num_groups,
              num_classes=num_classes, head_channels=head_channels, norm_eps=norm_eps,
              time_embedding=time_embedding)
  check(sample_shape, **arch)
  check_conditions(sample_shape, **arch, context_dim=context_dim,
                   cross_attention_resolutions=tuple(cross_attention_resolutions),
                   transformer_depth=transformer_depth, low_res_size=low_res_size,
                   embedding_dim=embedding_dim, embedding_tokens=embedding_tokens)
  check_compute(remat, attention_impl, dtype)
  module = UNet(
      base_channels=int(base_channels),
      channel_mult=tuple(int(k) for k in channel_mult),
      num_res_blocks=int(num_res_blocks),
      attention_resolutions=tuple(int(r) for r in attention_resolutions),
      num_heads=int(num_heads),
      head_channels=int(head_channels),
      dropout=float(dropout),
      num_groups=int(num_groups),
      norm_eps=float(norm_eps),
      time_embedding=str(time_embedding),
      mid_attention=bool(mid_attention),
      num_classes=int(num_classes),
      scale_shift=bool(scale_shift),
      context_dim=int(context_dim),
      cross_attention_resolutions=tuple(int(r) for r in cross_attention_resolutions),
      transformer_depth=int(transformer_depth),
      embedding_dim=int(embedding_dim),
      embedding_tokens=int(embedding_tokens),
      low_res_size=int(low_res_size),
      dtype=dtype,
      fast=bool(fast),
      remat=remat,
      attention_impl=attention_impl,
  )
  null_cond = {"label": np.int32(num_classes)} if num_classes else {}
  if context_dim:
    null_cond.update(context=np.zeros((1, int(context_dim)), np.float32),
                     context_mask=np.zeros((1,), bool))
  if embedding_dim:
    null_cond["embedding"] = np.zeros((int(embedding_dim),), np.float32)
  return module, null_cond
