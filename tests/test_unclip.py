"""unCLIP (DALL-E 2) on the embedded digits: the contrastive stage, the prior, the decoder.

The contrastive loss against a direct transcription of CLIP's pseudocode; the contrastive
stage (configs/digits_clip.py) trained through scripts/train.py (conftest's `digits_clip_run`)
and judged by its held-out zero-shot accuracy.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import contrastive
from diffax.pipeline import embeddings
from diffax.pipeline import train
from configs import digits_clip
from conftest import embedded_digits


def reference_clip_loss(img, txt, log_scale, ids):
  """CLIP's loss written out with numpy, one example at a time (soft targets over equal ids)."""
  img = img / np.linalg.norm(img, axis=1, keepdims=True)
  txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
  logits = np.exp(log_scale) * img @ txt.T
  n = len(img)
  total = 0.0
  for direction in (logits, logits.T):
    for i in range(n):
      row = direction[i] - np.max(direction[i])
      log_p = row - np.log(np.sum(np.exp(row)))
      positives = [j for j in range(n) if ids[j] == ids[i]]
      total += -np.mean([log_p[j] for j in positives]) / (2 * n)
  return total


def test_clip_loss_matches_the_reference():
  rng = np.random.default_rng(0)
  img, txt = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  ids = np.array([0, 1, 2, 1, 3, 0])
  for text_ids, ref_ids in ((None, np.arange(6)), (ids, ids)):
    loss, aux = jax.jit(contrastive.clip_loss)(img, txt, 1.5, text_ids=text_ids)
    np.testing.assert_allclose(loss, reference_clip_loss(img, txt, 1.5, ref_ids), rtol=1e-5)
    np.testing.assert_allclose(aux["temperature"], np.exp(-1.5), rtol=1e-6)


def test_clip_loss_rewards_alignment_and_clips_the_scale():
  rng = np.random.default_rng(1)
  txt = rng.normal(size=(8, 16))
  aligned, _ = contrastive.clip_loss(txt * 3.0, txt, np.log(100.0))
  shuffled, aux = contrastive.clip_loss(txt[::-1], txt, np.log(100.0))
  assert aligned < 0.05 < np.log(8) < shuffled
  assert aux["accuracy"] == 0.0
  # s beyond log(100) acts as log(100), with no gradient pushing it further.
  grad = jax.grad(lambda s: contrastive.clip_loss(txt, txt, s)[0])(jnp.float32(6.0))
  assert grad == 0.0
  np.testing.assert_allclose(contrastive.clip_loss(txt[::-1], txt, 6.0)[0], shuffled,
                             rtol=1e-6)


def test_contrastive_stage_zero_shot_accuracy(digits_clip_run):
  """Held-out digits matched to "a handwritten 0" ... "a handwritten 9" by the trained tower:
  the stage's own evaluation, and the same measured again through `embeddings.load`."""
  rows = [json.loads(line) for line in open(digits_clip_run / "metrics.jsonl")]
  evals = [r for r in rows if "eval/zero_shot_accuracy" in r]
  assert [r["step"] for r in evals][-1] == 300
  accuracy = evals[-1]["eval/zero_shot_accuracy"]
  print("held-out zero-shot accuracy:", accuracy)  # measured: 0.956 (chance 0.1)
  assert accuracy > 0.8, evals
  losses = [r["loss"] for r in rows if "loss" in r]
  assert losses[-1] < losses[0] - 1.0, losses  # log(128) = 4.85 at the start

  clip = embeddings.load(digits_clip_run)
  assert clip.step == 300 and clip.embedding_dim == 384
  images, labels = embedded_digits()
  held_out = slice(1500, None)  # the digits_text test split's source images
  emb = clip.embed_images(images[held_out])
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  prompts = clip.embed_texts(digits_clip.PROMPTS)
  predicted = np.asarray(contrastive.zero_shot_predict(emb, prompts))
  assert np.mean(predicted == labels[held_out]) > 0.8


def test_contrastive_config_errors(tmp_path):
  config = digits_clip.get_config("smoke")
  with config.unlocked():
    config.model.embedding_dim = 128
  with pytest.raises(ValueError, match=r"embedding_dim=128 must equal the width 384"):
    train.train_and_evaluate(config, str(tmp_path / "a"))
  config = digits_clip.get_config("smoke")
  config.contrastive.prompts = ("a handwritten 0",)
  with pytest.raises(ValueError, match=r"holds 1 prompt\(s\).*num_classes=10"):
    train.train_and_evaluate(config, str(tmp_path / "b"))
  with pytest.raises(ValueError, match="not a contrastive|config.task='diffusion'"):
    (tmp_path / "c").mkdir()
    from configs import digits  # pylint: disable=import-outside-toplevel
    from diffax.pipeline.workdir import Workdir  # pylint: disable=import-outside-toplevel
    Workdir(str(tmp_path / "c")).save_config(digits.get_config("smoke"))
    embeddings.load(tmp_path / "c")
