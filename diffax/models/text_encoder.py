"""Frozen pretrained text encoders: token ids -> the `context` of the conditioning pytree.

A text encoder is pure functions, like a denoiser (`diffax.models.Model`):

  encoder = diffax.models.text_encoder.create("bert", vocab_size=30522, hidden_size=384, ...)
  out = encoder.apply_fn(params, token_ids, mask)   # i32[B, L], bool[B, L] -> Encoded
  cond = {"context": out.tokens, "context_mask": out.mask}   # what cross-attention reads
  out.pooled                                        # f32[B, D], the sentence embedding

Its parameters come from a pretrained checkpoint (`diffax.interop.text_encoder_from_transformers`
maps a transformers state dict onto them) and are never trained; tokenizing text and reading a
checkpoint directory are the pipeline's (`diffax.pipeline.text`). `ENCODERS` maps an
architecture name to its network, each with the same `(params, token_ids, mask) -> Encoded`
contract: BERT (`bert`, bidirectional; pooled: the mean or [CLS]) and CLIP's text tower
(`clip_text`, causal, Stable Diffusion's; pooled: the end-of-text state). A T5 encoder would be
another entry.
"""

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffax.models import bert
from diffax.models import clip_text


class Encoded(NamedTuple):
  """A batch of encoded texts."""
  tokens: jax.Array   # f32[B, L, D] per-token embeddings, zero at padding
  mask: jax.Array     # bool[B, L] True at real tokens
  pooled: jax.Array   # f32[B, D] one embedding per text


@dataclasses.dataclass(frozen=True)
class TextEncoder:
  """A text encoder as pure functions.

  Attributes:
    apply_fn: `apply_fn(params, token_ids i32[B, L], mask bool[B, L]) -> Encoded`.
    init_fn: `init_fn(rng) -> params` (random; real ones come from a checkpoint).
    width: D, the width of its token embeddings (a U-Net's `context_dim`).
    max_length: the longest sequence it takes (its position table).
    name: the architecture, a key of `ENCODERS`.
  """
  apply_fn: Callable
  init_fn: Callable
  width: int
  max_length: int
  name: str


def _wrap(module, name: str, width: int, max_length: int) -> TextEncoder:
  """A Flax `module(token_ids, mask) -> (tokens, pooled)` as a `TextEncoder`."""

  def apply_fn(params, token_ids, mask):
    mask = jnp.asarray(mask, bool)
    tokens, pooled = module.apply({"params": params}, jnp.asarray(token_ids, jnp.int32), mask)
    return Encoded(tokens=tokens, mask=mask, pooled=pooled)

  def init_fn(rng):
    ids = jnp.zeros((1, 2), jnp.int32)
    return module.init(rng, ids, jnp.ones((1, 2), bool))["params"]

  return TextEncoder(apply_fn=apply_fn, init_fn=init_fn, width=width, max_length=max_length,
                     name=name)


def _bert(dtype, **arch) -> TextEncoder:
  bert.check(**arch)
  return _wrap(bert.BertEncoder(**arch, dtype=dtype), "bert", arch["hidden_size"],
               arch["max_positions"])


def _clip(dtype, **arch) -> TextEncoder:
  clip_text.check(**arch)
  return _wrap(clip_text.ClipTextEncoder(**arch, dtype=dtype), "clip", arch["hidden_size"],
               arch["max_positions"])


# name -> builder(dtype, **arch) -> TextEncoder.
ENCODERS = {"bert": _bert, "clip": _clip}


def create(name: str, *, dtype=jnp.float32, **arch) -> TextEncoder:
  """The text encoder `name` (a key of `ENCODERS`) with architecture keywords `arch`.

  Raises:
    ValueError: an unknown name or architecture value, named.
  """
  if name not in ENCODERS:
    raise ValueError(f"unknown text encoder {name!r}; choose one of {sorted(ENCODERS)}")
  return ENCODERS[name](dtype, **arch)
