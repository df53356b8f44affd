"""BERT (Devlin et al. 2019) as a frozen text encoder: token ids -> per-token embeddings.

The network of Hugging Face transformers' `BertModel` (and so of every checkpoint whose
config.json says `"model_type": "bert"`: BERT, MiniLM, all-MiniLM-L6-v2, bge, e5, ...), written
in Flax with the same parameter layout, so `diffax.interop.bert_from_transformers` maps a
safetensors state dict onto it by renaming and transposing:

  embeddings:  word + position + token-type embeddings, LayerNorm
  layer_i:     h = LayerNorm(h + Dense(MultiHeadAttention(h, mask)))       (post-norm)
               h = LayerNorm(h + Dense(act(Dense(h))))

Attention is softmax(q k^T / sqrt(d) + bias) v per head, the bias -inf-like (the dtype's
minimum, as transformers) at padding keys; every position is computed, padding included, and
`BertEncoder` zeroes the padding rows of its output.

It is a feature extractor: no dropout, no pooler head (`pooling` picks the sentence embedding:
the mean over real tokens, sentence-transformers' pooling, or the first ([CLS]) token).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# hidden_act of the transformers config -> the function (transformers' ACT2FN names).
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
POOLINGS = ("mean", "cls")


class SelfAttention(nn.Module):
  """BERT's multi-head self-attention with biases on q, k, v (`BertSelfAttention`); with
  `causal`, each position attends to itself and earlier ones only (CLIP's text tower)."""
  num_heads: int
  dtype: Any = jnp.float32
  causal: bool = False

  @nn.compact
  def __call__(self, h, mask):
    """h `[B, L, D]`, mask `bool[B, L]` (True: a real token) -> `[B, L, D]`."""
    b, length, width = h.shape
    head = width // self.num_heads
    split = lambda x: x.reshape(b, length, self.num_heads, head)
    q = split(nn.Dense(width, dtype=self.dtype, name="query")(h))
    k = split(nn.Dense(width, dtype=self.dtype, name="key")(h))
    v = split(nn.Dense(width, dtype=self.dtype, name="value")(h))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(head)
    allowed = mask[:, None, None, :]  # [B, 1, 1, L]: the keys
    if self.causal:
      allowed = allowed & jnp.tril(jnp.ones((length, length), bool))  # [B, 1, L, L]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, width)


class Layer(nn.Module):
  """One post-norm transformer layer (`BertLayer`)."""
  num_heads: int
  intermediate_size: int
  activation: str
  layer_norm_eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h, mask):
    width = h.shape[-1]
    norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
    a = SelfAttention(self.num_heads, self.dtype, name="attention")(h, mask)
    h = norm("attention_norm")(h + nn.Dense(width, dtype=self.dtype, name="attention_out")(a))
    f = nn.Dense(self.intermediate_size, dtype=self.dtype, name="intermediate")(h)
    f = nn.Dense(width, dtype=self.dtype, name="output")(ACTIVATIONS[self.activation](f))
    return norm("output_norm")(h + f)


class BertEncoder(nn.Module):
  """BERT's embeddings and layers: `(token_ids, mask) -> (tokens, pooled)`.

  Attributes:
    vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
    type_vocab_size, layer_norm_eps, activation: the transformers config's vocab_size,
      hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
      max_position_embeddings, type_vocab_size, layer_norm_eps, hidden_act.
    pooling: the sentence embedding: "mean" over the real tokens or "cls" (the first token).
    dtype: compute dtype.
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"
  pooling: str = "mean"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, token_ids, mask):
    """Encodes token sequences.

    Args:
      token_ids: `i32[B, L]`, L <= max_positions.
      mask: `bool[B, L]`, True at real tokens (False at padding).

    Returns:
      `(tokens f32[B, L, D], pooled f32[B, D])`: the last layer's hidden states, zero at
      padding, and the sentence embedding of `pooling`.
    """
    length = token_ids.shape[1]
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype, name=name)
    h = (embed(self.vocab_size, "word_embeddings")(token_ids)
         + embed(self.max_positions, "position_embeddings")(jnp.arange(length))[None]
         + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(token_ids)))
    h = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="embeddings_norm")(h)
    for i in range(self.num_layers):
      h = Layer(self.num_heads, self.intermediate_size, self.activation, self.layer_norm_eps,
                self.dtype, name=f"layer_{i}")(h, mask)
    h = h.astype(jnp.float32)
    keep = mask[..., None].astype(jnp.float32)  # [B, L, 1]
    tokens = h * keep
    if self.pooling == "cls":
      pooled = h[:, 0]
    else:
      pooled = tokens.sum(1) / jnp.maximum(keep.sum(1), 1.0)
    return tokens, pooled


def check_transformer(model: str, activations, *, hidden_size, num_heads, activation,
                      **sizes) -> None:
  """Checks a transformer text encoder's architecture (BERT's, CLIP's).

  Args:
    model: its name in the messages.
    activations: the activation names it implements.
    hidden_size, num_heads, activation: the values to check.
    **sizes: further sizes that must be ints >= 1 (vocab_size, num_layers, ...).

  Raises:
    ValueError: naming the first bad value.
  """
  for name, value in dict(sizes, hidden_size=hidden_size, num_heads=num_heads).items():
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{model} {name} must be an int >= 1, got {value!r}")
  if hidden_size % num_heads:
    raise ValueError(f"{model} num_heads={num_heads} must divide hidden_size={hidden_size}")
  if activation not in activations:
    raise ValueError(f"{model} activation {activation!r} is not supported; choose one of "
                     f"{sorted(activations)}")


def check(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
          type_vocab_size, activation, pooling, **_) -> None:
  """Raises ValueError naming the first architecture value BertEncoder cannot build."""
  check_transformer("BERT", ACTIVATIONS, vocab_size=vocab_size, hidden_size=hidden_size,
                    num_layers=num_layers, num_heads=num_heads,
                    intermediate_size=intermediate_size, max_positions=max_positions,
                    type_vocab_size=type_vocab_size, activation=activation)
  if pooling not in POOLINGS:
    raise ValueError(f"BERT pooling {pooling!r} is unknown; choose one of {list(POOLINGS)}")
