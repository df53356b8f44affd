"""Contrastive image-text embeddings: CLIP's symmetric InfoNCE loss with a learned temperature.

CLIP (Radford et al. 2021, Fig. 3) embeds a batch of N images and their N texts, L2-normalizes
both, and scores every pair by a scaled cosine, `logits = exp(s) * img @ txt^T`; the loss is the
mean of the cross-entropies of picking each image's text among the N texts and each text's image
among the N images. `s` is the learned log of the inverse temperature, initialized to log(1/0.07)
and clipped at log(100).

Locked-text tuning (LiT, Zhai et al. 2022, with the towers' roles swapped): the text tower is a
frozen pretrained encoder (`diffax.models.text_encoder`), so its embeddings are fixed vectors
and only the image tower (`diffax.models.image_encoder`) and `s` are trained: the image
embeddings learn to live in the text encoder's space.

A captioned data set repeats captions ("a handwritten 7" captions many images), and two equal
texts in a batch are the same vector under a frozen tower. `text_ids` says which examples share
a text; each image's target is then spread evenly over the equal texts, and each text's over
their images (a duplicate is a positive, not a negative). Without `text_ids` this is CLIP's loss.

  params = {"log_scale": init_log_scale()}
  loss, aux = contrastive.clip_loss(image_emb, text_emb, params["log_scale"], text_ids=ids)
"""

import math
from typing import Optional

import jax
import jax.numpy as jnp

# CLIP: s = log(1 / 0.07) at the start, at most log(100).
INIT_TEMPERATURE = 0.07
MAX_LOG_SCALE = math.log(100.0)


def init_log_scale(temperature: float = INIT_TEMPERATURE) -> jax.Array:
  """The learned log inverse temperature at its start, `f32[]`."""
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature!r}")
  return jnp.asarray(-math.log(temperature), jnp.float32)


def normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """`x / |x|` along the last axis."""
  x = jnp.asarray(x, jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def similarity_logits(image_emb: jax.Array, text_emb: jax.Array, log_scale) -> jax.Array:
  """`exp(s) cos(image_i, text_j)`, `f32[N, M]` for `[N, D]` images and `[M, D]` texts.

  `s` is clipped at `MAX_LOG_SCALE` (CLIP), so no gradient pushes it beyond.
  """
  scale = jnp.exp(jnp.minimum(jnp.asarray(log_scale, jnp.float32), MAX_LOG_SCALE))
  return scale * normalize(image_emb) @ normalize(text_emb).T


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale, *,
              text_ids: Optional[jax.Array] = None) -> tuple[jax.Array, dict]:
  """CLIP's symmetric InfoNCE loss of a batch of matching (image, text) pairs.

  Args:
    image_emb: `[N, D]` image embeddings (normalized here).
    text_emb: `[N, D]` the embeddings of their texts, row i matching image i.
    log_scale: `f32[]`, the log inverse temperature s.
    text_ids: optional `i32[N]`: examples with equal ids share one text (both are positives
      of each other's image); None: every text is distinct (CLIP).

  Returns:
    `(loss, aux)`: the mean of the image->text and text->image cross-entropies, and `aux` with
    `"accuracy"` (the fraction of images whose best-scoring text is one of theirs) and
    `"temperature"` (1 / exp(s)).
  """
  image_emb, text_emb = jnp.asarray(image_emb), jnp.asarray(text_emb)
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(f"image_emb and text_emb must both be [N, D], got shapes "
                     f"{tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
  n = image_emb.shape[0]
  logits = similarity_logits(image_emb, text_emb, log_scale)  # [N, N], images x texts
  if text_ids is None:
    positive = jnp.eye(n, dtype=bool)
  else:
    ids = jnp.asarray(text_ids)
    positive = ids[:, None] == ids[None, :]  # [N, N], symmetric, diagonal True
  targets = positive / jnp.sum(positive, axis=1, keepdims=True)  # each row sums to 1
  image_to_text = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)  # [N]
  text_to_image = -jnp.sum(targets * jax.nn.log_softmax(logits.T, axis=1), axis=1)  # [N]
  loss = 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
  best = jnp.argmax(logits, axis=1)
  accuracy = jnp.mean(jnp.take_along_axis(positive, best[:, None], axis=1))
  temperature = jnp.exp(-jnp.minimum(jnp.asarray(log_scale, jnp.float32), MAX_LOG_SCALE))
  return loss, {"accuracy": accuracy, "temperature": temperature}


def zero_shot_predict(image_emb: jax.Array, class_text_emb: jax.Array) -> jax.Array:
  """CLIP's zero-shot classifier: the class whose prompt's embedding is nearest (cosine).

  Args:
    image_emb: `[N, D]`.
    class_text_emb: `[K, D]`, one prompt embedding per class (e.g. "a handwritten 7").

  Returns:
    `i32[N]` class indices.
  """
  return jnp.argmax(normalize(image_emb) @ normalize(class_text_emb).T, axis=1)
