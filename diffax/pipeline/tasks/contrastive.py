"""The contrastive task: a CLIP-style image tower aligned to the frozen text encoder.

`config.task = "contrastive"` trains a small image tower with a projection
(`diffax.models.image_encoder`, read from `config.model`: widths `base_channels *
channel_mult`, `hidden_dim`, `embedding_dim`, `num_groups`) and CLIP's learned temperature with
the symmetric InfoNCE loss (`diffax.contrastive.clip_loss`) on a captioned dataset. The text
tower is locked: the frozen text encoder of `config.text` (its pooled sentence embedding), so
`config.model.embedding_dim` must be its width and the image embeddings land in its space.
Captions are encoded once on the host (every distinct caption of the split, before the first
step); the step sees `{"x": images, "text": [B, D], "text_id": i32[B]}`, where equal captions
share an id (`clip_loss`'s duplicate positives).

The trained parameters are `{"image": tower, "log_scale": s}`. Its evaluation (every
`config.eval.every` steps and at the end; EMA params) on the held-out split
`config.contrastive.eval_split`: `eval/zero_shot_accuracy`, the fraction of held-out images
whose nearest prompt of `config.contrastive.prompts` (one per class, "a handwritten 0", ...) is
their label's, and `eval/loss`, the contrastive loss of the held-out images and captions. It
draws no samples. Later stages (an unCLIP prior and decoder) load the run with
`diffax.pipeline.embeddings.load`.
"""

from typing import Optional

import jax
import numpy as np

from diffax import contrastive
from diffax.models import image_encoder
from diffax.pipeline import build
from diffax.pipeline import parallel
from diffax.pipeline import text as text_lib
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir


def network(config) -> image_encoder.ImageEncoder:
  """The image tower of `config.model` for the images of `config.data`."""
  m = config.model
  if m.name != "image_encoder":
    raise ValueError(f"config.model.name={m.name!r}: config.task='contrastive' trains the "
                     f"model 'image_encoder'")
  with build.section("config.model"):
    return image_encoder.create(
        sample_shape=build.sample_shape(config), embedding_dim=m.embedding_dim,
        widths=tuple(m.base_channels * k for k in m.channel_mult), hidden_dim=m.hidden_dim,
        num_groups=m.num_groups)


def load_text_encoder(config) -> text_lib.FrozenTextEncoder:
  """The frozen text tower of `config.text`, checked against `config.model.embedding_dim`."""
  text = text_lib.load(config.text.encoder or None, max_length=config.text.max_length)
  if text.width != config.model.embedding_dim:
    raise ValueError(
        f"config.model.embedding_dim={config.model.embedding_dim} must equal the width "
        f"{text.width} of the frozen text encoder's embeddings (config.text.encoder="
        f"{config.text.encoder or 'the default, all-MiniLM-L6-v2'!r}): the text tower is "
        f"locked, the image embeddings live in its space")
  return text


def text_embeddings(text: text_lib.FrozenTextEncoder, texts) -> np.ndarray:
  """The locked text tower's embeddings of `texts`: pooled, unit norm, `f32[N, D]`."""
  pooled = text.encode(list(texts)).pooled
  return pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-6)


def decode(captions) -> list:
  return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in captions]


class ContrastiveTask:
  """Trains `network(config)` and CLIP's temperature against the locked text tower."""

  def __init__(self, config):
    if config.train.grad_accum_steps != 1:
      raise ValueError(f"config.train.grad_accum_steps={config.train.grad_accum_steps}: a "
                       f"contrastive loss scores every pair of the whole batch, which "
                       f"micro-batches would split; set it to 1")
    prompts = tuple(config.contrastive.prompts)
    if len(prompts) != config.data.num_classes:
      raise ValueError(f"config.contrastive.prompts holds {len(prompts)} prompt(s); the "
                       f"zero-shot evaluation needs one per class, config.data.num_classes="
                       f"{config.data.num_classes}")
    self.config = config
    self.tower = network(config)
    self.frozen = self.preprocess = None  # the text tower runs on the host, once per caption
    self.text = None
    self._caption_ids = None
    temperature = config.contrastive.init_temperature
    with build.section("config.contrastive"):
      contrastive.init_log_scale(temperature)

  def init_fn(self, rng: jax.Array) -> dict:
    """`{"image": the tower's params, "log_scale": log(1 / init_temperature)}`."""
    return {"image": self.tower.init_fn(rng),
            "log_scale": contrastive.init_log_scale(self.config.contrastive.init_temperature)}

  def loss_fn(self, params, batch, rng):
    del rng  # nothing random
    image_emb = self.tower.apply_fn(params["image"], batch["x"])  # [B, D]
    return contrastive.clip_loss(image_emb, batch["text"], params["log_scale"],
                                 text_ids=batch["text_id"])

  def check(self) -> None:
    """Nothing beyond what building the task checked."""

  def prepare(self, workdir: Workdir, mesh):
    """Loads the text tower and encodes every distinct caption of the training split once."""
    del workdir, mesh
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    self.text = load_text_encoder(self.config)
    captions = data.captions(self.config)
    self._caption_ids = {c: i for i, c in enumerate(captions)}
    self.text.encode(captions)
    report(f"locked text tower: {len(captions)} distinct captions encoded by "
           f"{self.text.directory} ({self.text.width}-d)")
    return self.config

  def device_batch(self, host_batch: dict, step: int, mesh) -> dict:
    del step
    if "caption" not in host_batch:
      raise ValueError(f"config.task='contrastive' trains on captions, but config.data.dataset="
                       f"{self.config.data.dataset!r} has no 'caption' feature (use e.g. "
                       f"digits_text)")
    captions = decode(host_batch["caption"])
    batch = {"x": host_batch["image"], "text": text_embeddings(self.text, captions),
             "text_id": np.array([self._caption_ids[c] for c in captions], np.int32)}
    return parallel.shard_batch(batch, mesh)

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> Optional[str]:
    del workdir, step, params, mesh
    return None

  def evaluator(self, workdir: Workdir, mesh):
    """`evaluate(step, params) -> {"eval/zero_shot_accuracy", "eval/loss"}` on the held-out
    split, or None when `config.eval.every` is 0."""
    del workdir
    if not self.config.eval.every:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    c = self.config.contrastive
    heldout = data.load_eval_images(self.config, None, split=c.eval_split)
    text = self.text or load_text_encoder(self.config)
    prompts = text_embeddings(text, c.prompts)  # [K, D]
    captions = decode(heldout["caption"])
    caption_emb = text_embeddings(text, captions)  # [N, D]
    ids = {t: i for i, t in enumerate(sorted(set(captions)))}
    caption_ids = np.array([ids[t] for t in captions], np.int32)
    embed = jax.jit(self.tower.apply_fn)

    def evaluate(step, params):
      del step
      emb = parallel.map_batches(embed, params["image"], heldout["image"], mesh,
                                 batch_size=512)  # [N, D]
      predicted = np.asarray(contrastive.zero_shot_predict(emb, prompts))
      loss, _ = contrastive.clip_loss(emb, caption_emb, jax.device_get(params["log_scale"]),
                                      text_ids=caption_ids)
      return {"eval/zero_shot_accuracy": float(np.mean(predicted == heldout["label"])),
              "eval/loss": float(loss)}

    return evaluate
