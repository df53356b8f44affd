"""CLIP's text tower (Radford et al. 2021) as a frozen text encoder: Stable Diffusion's.

The network of Hugging Face transformers' `CLIPTextModel` (config.json `"model_type":
"clip_text_model"`, the `text_encoder/` of Stable Diffusion 1.x and 2.x), with the same
parameters, so `diffax.interop.text_encoder_from_transformers` maps its state dict onto it:

  embeddings:  token + position embeddings (no LayerNorm)
  layer_i:     h = h + out_proj(CausalSelfAttention(LayerNorm(h), mask))    (pre-norm)
               h = h + fc2(act(fc1(LayerNorm(h))))      act: quick_gelu (SD 1.x) or gelu (SD 2.x)
  output:      final LayerNorm: `tokens` (transformers' last_hidden_state)
  pooled:      the output at the end-of-text token (transformers' pooler_output)

Attention is causal: position i attends to positions <= i. `mask` is also a key mask, as when
transformers is given an `attention_mask`, and `tokens` are zero where it is False. Stable
Diffusion calls the encoder without an attention mask and cross-attends over every position,
padding included: pass `mask` all True (and the padded ids) to get its context exactly; causal
attention means the real tokens' states do not depend on the padding either way.

The pooled state is read where transformers reads it: at the first `eos_token_id` of each
sequence, or, for configs with the legacy `eos_token_id == 2` (the original OpenAI checkpoints,
SD 1.x), at the largest token id (end-of-text is the last entry of CLIP's vocabulary).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffax.models import bert

# hidden_act of the transformers config -> the function (transformers' ACT2FN names).
ACTIVATIONS = {**bert.ACTIVATIONS, "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x)}
LEGACY_EOS_TOKEN_ID = 2  # transformers' marker of configs written before its PR #24773


class Layer(bert.Layer):
  """One pre-norm transformer layer with causal self-attention (`CLIPEncoderLayer`): BERT's
  layer with the norms moved before each branch."""

  @nn.compact
  def __call__(self, h, mask):
    width = h.shape[-1]
    norm = lambda name: nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name=name)
    a = bert.SelfAttention(self.num_heads, self.dtype, causal=True, name="attention")(
        norm("layer_norm1")(h), mask)
    h = h + nn.Dense(width, dtype=self.dtype, name="out_proj")(a)
    f = nn.Dense(self.intermediate_size, dtype=self.dtype, name="fc1")(norm("layer_norm2")(h))
    return h + nn.Dense(width, dtype=self.dtype, name="fc2")(ACTIVATIONS[self.activation](f))


class ClipTextEncoder(nn.Module):
  """CLIP's text transformer: `(token_ids, mask) -> (tokens, pooled)`.

  Attributes:
    vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
    layer_norm_eps, activation, eos_token_id: the transformers CLIPTextConfig's vocab_size,
      hidden_size, num_hidden_layers, num_attention_heads, intermediate_size,
      max_position_embeddings, layer_norm_eps, hidden_act, eos_token_id.
    dtype: compute dtype.
  """
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 77
  layer_norm_eps: float = 1e-5
  activation: str = "quick_gelu"
  eos_token_id: int = 49407
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, token_ids, mask):
    """Encodes token sequences.

    Args:
      token_ids: `i32[B, L]`, L <= max_positions, each with its end-of-text token.
      mask: `bool[B, L]`, True at the positions attended to (see the module docstring).

    Returns:
      `(tokens f32[B, L, D], pooled f32[B, D])`: the final LayerNorm's output, zero where mask
      is False, and its row at the end-of-text token.
    """
    length = token_ids.shape[1]
    embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype, name=name)
    h = (embed(self.vocab_size, "token_embedding")(token_ids)
         + embed(self.max_positions, "position_embedding")(jnp.arange(length))[None])
    for i in range(self.num_layers):
      h = Layer(self.num_heads, self.intermediate_size, self.activation, self.layer_norm_eps,
                self.dtype, name=f"layer_{i}")(h, mask)
    h = nn.LayerNorm(self.layer_norm_eps, dtype=self.dtype, name="final_layer_norm")(h)
    h = h.astype(jnp.float32)
    if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
      eos = jnp.argmax(token_ids, axis=-1)  # [B]: the first largest id
    else:
      eos = jnp.argmax(token_ids == self.eos_token_id, axis=-1)  # [B]: the first eos
    pooled = jnp.take_along_axis(h, eos[:, None, None], axis=1)[:, 0]
    return h * mask[..., None], pooled


def check(*, vocab_size, hidden_size, num_layers, num_heads, intermediate_size, max_positions,
          activation, eos_token_id, **_) -> None:
  """Raises ValueError naming the first architecture value ClipTextEncoder cannot build."""
  bert.check_transformer("CLIP", ACTIVATIONS, vocab_size=vocab_size, hidden_size=hidden_size,
                         num_layers=num_layers, num_heads=num_heads,
                         intermediate_size=intermediate_size, max_positions=max_positions,
                         activation=activation)
  if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int):
    raise ValueError(f"CLIP eos_token_id must be one int (the end-of-text token id), got "
                     f"{eos_token_id!r}")
