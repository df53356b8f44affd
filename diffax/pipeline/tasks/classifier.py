"""The classifier task: a small CNN trained on `config.data`'s labels, the feature network of
the evaluation (`diffax.evaluation.classifier`; see configs/classifier.py).

Its network is `config.model` read as: widths `base_channels * channel_mult`, `feature_dim`,
`num_groups`, `dropout`; its classes `config.data.num_classes`. It draws no samples; its
evaluation (every `config.eval.every` steps and at the end) is the accuracy of the EMA params on
the held-out split `config.eval.heldout_split`.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffax.evaluation import classifier
from diffax.pipeline import build
from diffax.pipeline import parallel
from diffax.pipeline.workdir import Workdir


def network(config) -> classifier.Classifier:
  """The classifier of `config.model` for the images and classes of `config.data`."""
  m = config.model
  with build.section("config.model"):
    return classifier.create(
        sample_shape=build.sample_shape(config), num_classes=config.data.num_classes,
        widths=tuple(m.base_channels * k for k in m.channel_mult),
        feature_dim=m.get("feature_dim", 128), num_groups=m.num_groups, dropout=m.dropout)


class ClassifierTask:
  """Trains `network(config)` with softmax cross-entropy on `config.data`'s labels."""

  def __init__(self, config):
    if config.data.num_classes < 2:
      raise ValueError(f"config.data.num_classes={config.data.num_classes}: the classifier "
                       f"task needs a labelled dataset with >= 2 classes")
    self.config = config
    self.model = network(config)
    self.init_fn = self.model.init_fn
    self.loss_fn = classifier.cross_entropy_loss_fn(self.model)
    self.frozen = self.preprocess = None  # it trains all it uses

  def check(self) -> None:
    """A classifier draws nothing: nothing beyond what building the task checked."""

  def prepare(self, workdir: Workdir, mesh):
    del workdir, mesh
    return self.config

  def device_batch(self, host_batch: dict, step: int, mesh) -> dict:
    del step
    return parallel.shard_batch({"x": host_batch["image"], "label": host_batch["label"]}, mesh)

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> Optional[str]:
    del workdir, step, params, mesh
    return None

  def evaluator(self, workdir: Workdir, mesh):
    """`evaluate(step, params) -> {"eval/accuracy": ...}` on the held-out split, or None when
    `config.eval.every` is 0."""
    del workdir
    if not self.config.eval.every:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    heldout = data.load_eval_images(self.config, None, split=self.config.eval.heldout_split)
    features_fn = jax.jit(self.model.features_fn)

    def evaluate(step, params):
      del step
      _, logits = parallel.map_batches(features_fn, params,
                                       heldout["image"], mesh, batch_size=500)
      accuracy = float(np.mean(np.argmax(logits, -1) == heldout["label"]))
      log_probs = jax.nn.log_softmax(jnp.asarray(logits))
      nll = float(-jnp.mean(jnp.take_along_axis(log_probs, heldout["label"][:, None], 1)))
      return {"eval/accuracy": accuracy, "eval/loss": nll}

    return evaluate

