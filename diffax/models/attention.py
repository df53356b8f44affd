"""Cross-attention to a token sequence: Stable Diffusion's spatial transformer.

`SpatialTransformer` is diffusers' `Transformer2DModel` with `BasicTransformerBlock`s (Rombach
et al. 2022, sec. 3.3; the LDM `SpatialTransformer`), laid out so that a later converter can
load Stable Diffusion's weights by renaming (names in brackets are diffusers'):

  h = GroupNorm(x)                                   [norm]
  h = proj_in(h)  (a linear map of the channels)     [proj_in]
  depth x BasicTransformerBlock on the N = H*W tokens:
    h = h + SelfAttention(LayerNorm(h))              [norm1, attn1]
    h = h + CrossAttention(LayerNorm(h), context)    [norm2, attn2]
    h = h + FeedForward(LayerNorm(h))  (GEGLU)       [norm3, ff]
  out = x + proj_out(h)                              [proj_out]

Attention is softmax(q k^T / sqrt(d)) v per head (Vaswani et al. 2017), q, k, v projections
without bias, the output projection with one. Cross-attention reads only the tokens where
`context_mask` is True; a sequence with no real token (the null condition of classifier-free
guidance, `diffax.conditioning`) contributes nothing but the output projection's bias. Any
number of spatial axes works: the positions are flattened into tokens. SD 1's 1x1-conv
proj_in/proj_out and SD 2's linear ones (use_linear_projection) are the same map: their
kernels load as the same `[C, C]` matrix.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models import layers

Dtype = Any


class Linear(nn.Module):
  """A Dense layer on the last axis, optionally without bias (diffusers' to_q/to_k/to_v)."""
  features: int
  use_bias: bool = True
  zero: bool = False
  dtype: Dtype = jnp.float32
  fast: bool = True

  @nn.compact
  def __call__(self, x):
    init = layers.zeros_init if self.zero else layers.default_init
    if self.use_bias:
      return layers.Dense(self.features, dtype=self.dtype, kernel_init=init, fast=self.fast,
                          name="dense")(x)
    kernel = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
    return jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                               (((x.ndim - 1,), (0,)), ((), ())))


def multi_head_attention(q, k, v, num_heads: int, mask: Optional[jax.Array] = None, *,
                         implementation: Optional[str] = None):
  """softmax(q k^T / sqrt(d)) v over `num_heads` heads, logits and softmax in float32.

  Args:
    q: `[B, N, C]` queries.
    k, v: `[B, M, C]` keys and values.
    num_heads: heads; divides C.
    mask: None, or `bool[B, M]`: the keys each query may attend to. A row of all False gives
      a zero output (nothing to attend to).
    implementation: None: the einsums below; "xla" or "cudnn": `jax.nn.dot_product_attention`
      with that implementation (cuDNN's fused kernel: a GPU, float16 / bfloat16). The same
      function either way, the all-False row included.

  Returns:
    `[B, N, C]`.
  """
  b, n, c = q.shape
  m = k.shape[1]
  head = c // num_heads
  q = q.reshape(b, n, num_heads, head)
  k = k.reshape(b, m, num_heads, head)
  v = v.reshape(b, m, num_heads, head)
  has_keys = None if mask is None else jnp.any(mask, axis=-1)[:, None, None, None]  # [B,1,1,1]
  if implementation is not None:
    key_mask = None if mask is None else mask[:, None, None, :]  # [B, 1, 1, M]
    out = jax.nn.dot_product_attention(q, k, v, mask=key_mask, implementation=implementation)
    # dot_product_attention spreads a row without keys evenly over the values: zero it.
    out = out if mask is None else out * has_keys.astype(out.dtype)
    return out.reshape(b, n, c)
  logits = jnp.einsum("bnhd,bmhd->bhnm", q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(head)
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    weights = weights * has_keys
  out = jnp.einsum("bhnm,bmhd->bnhd", weights.astype(v.dtype), v)
  return out.reshape(b, n, c)


class Attention(nn.Module):
  """diffusers' `Attention`: to_q, to_k, to_v (no bias), attention, to_out (with bias).

  Attributes:
    num_heads: heads.
    dtype: compute dtype.
    fast: the layers' hand-written gradients (`layers`).
    implementation: of `multi_head_attention`: None (its einsums), "xla" or "cudnn".
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  fast: bool = True
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, h, context=None, mask=None):
    """h `[B, N, C]`; context `[B, M, D]` (None: self-attention), mask `bool[B, M]`."""
    c = h.shape[-1]
    context = h if context is None else context.astype(self.dtype)
    proj = lambda name, bias=False: Linear(c, bias, dtype=self.dtype, fast=self.fast, name=name)
    out = multi_head_attention(proj("to_q")(h), proj("to_k")(context), proj("to_v")(context),
                               self.num_heads, mask, implementation=self.implementation)
    return proj("to_out", True)(out)


class FeedForward(nn.Module):
  """GEGLU feed-forward (Shazeer 2020): Dense(4C * 2) -> a * gelu(gate) -> Dense(C)."""
  mult: int = 4
  dtype: Dtype = jnp.float32
  fast: bool = True

  @nn.compact
  def __call__(self, h):
    c = h.shape[-1]
    a, gate = jnp.split(Linear(2 * self.mult * c, dtype=self.dtype, fast=self.fast,
                               name="proj")(h), 2, axis=-1)
    h = a * jax.nn.gelu(gate, approximate=False)
    return Linear(c, dtype=self.dtype, fast=self.fast, name="out")(h)


class TransformerBlock(nn.Module):
  """diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU, pre-norm."""
  num_heads: int
  dtype: Dtype = jnp.float32
  fast: bool = True
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, h, context, mask):
    norm = lambda name: nn.LayerNorm(1e-5, dtype=self.dtype, name=name)
    attn = lambda name: Attention(self.num_heads, self.dtype, self.fast, self.implementation,
                                  name=name)
    h = h + attn("attn1")(norm("norm1")(h))
    h = h + attn("attn2")(norm("norm2")(h), context, mask)
    return h + FeedForward(dtype=self.dtype, fast=self.fast, name="ff")(norm("norm3")(h))


class SpatialTransformer(nn.Module):
  """diffusers' `Transformer2DModel` (continuous input): features attend to a context.

  Attributes:
    num_heads: attention heads; divides the channel count.
    num_groups: GroupNorm groups.
    depth: transformer blocks (SD's transformer_layers_per_block).
    dtype: compute dtype.
    fast: the layers' hand-written gradients (`layers`).
    implementation: of `multi_head_attention`: None (its einsums), "xla" or "cudnn".
  """
  num_heads: int
  num_groups: int
  depth: int = 1
  dtype: Dtype = jnp.float32
  fast: bool = True
  implementation: Optional[str] = None

  @nn.compact
  def __call__(self, x, context, mask):
    """x `[B, *spatial, C]`, context `[B, M, D]`, mask `bool[B, M]` -> shaped like x."""
    b, c = x.shape[0], x.shape[-1]
    h = layers.GroupNorm(self.num_groups, dtype=self.dtype, fast=self.fast, name="norm")(x)
    h = Linear(c, dtype=self.dtype, fast=self.fast, name="proj_in")(h.reshape(b, -1, c))
    for i in range(self.depth):
      h = TransformerBlock(self.num_heads, self.dtype, self.fast, self.implementation,
                           name=f"transformer_blocks_{i}")(h, context, mask)
    h = Linear(c, zero=True, dtype=self.dtype, fast=self.fast, name="proj_out")(h)
    return x + h.reshape(x.shape).astype(x.dtype)
