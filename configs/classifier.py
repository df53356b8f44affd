"""A feature classifier for evaluation: the FD/KID feature space that needs no download.

A small CNN (diffax.evaluation.classifier) trained by diffax on a data set's training split
(`task = "classifier"`); its penultimate features give the Frechet and kernel distances of
samples, its predictions their class coverage and, for class-conditional models, their accuracy.
A run whose config has `eval.classifier` (configs/digits.py, digits_cond.py, mnist.py) trains
this recipe itself when its classifier workdir is empty; to train one on its own (e.g. to share
it between runs, `--config.eval.classifier_workdir=DIR`):

  python scripts/train.py --config=configs/classifier.py:dataset=digits \
      --workdir=workdirs/digits_classifier

Variants: `dataset=NAME` picks the data (digits, mnist, fashion_mnist; default digits);
`smoke` shrinks everything to a seconds-long run. Held-out accuracy on the `test` split is logged
as eval/accuracy (digits: 0.976 after 600 steps, about a minute on 2 busy CPU cores).
"""

import ml_collections

from configs import common

# dataset -> (image_size, channels, num_classes, training steps)
DATASETS = {
    "digits": (8, 1, 10, 600),
    "mnist": (28, 1, 10, 3000),
    "fashion_mnist": (28, 1, 10, 3000),
}


def for_data(data) -> ml_collections.ConfigDict:
  """The classifier recipe for a run's `config.data` (same dataset, size, channels, classes)."""
  c = common.base_config()
  c.task = "classifier"
  c.data.update({k: data[k] for k in ("dataset", "split", "image_size", "channels",
                                      "num_classes", "data_dir", "download")})
  c.data.random_flip = False
  size = data.image_size
  c.model.name = "classifier"
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2) if size <= 8 else (1, 2, 4)  # widths: base x mult
  c.model.num_groups = 8
  c.model.dropout = 0.1
  c.model.feature_dim = 128        # the feature space of FD/KID
  c.model.attention_resolutions = ()

  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-4
  c.optim.ema_decay = 0.99

  steps = DATASETS.get(data.dataset, (None, None, None, 3000))[3]
  c.train.num_steps = steps
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.checkpoint_every = steps
  c.train.keep_checkpoints = 1
  c.train.sample_every = 0
  c.eval.every = steps // 3        # held-out accuracy, 3 times per run
  c.eval.metrics = ()
  return c


def get_config(arg=None):
  variants = common.parse_arg(arg, allowed=("smoke", "dataset"))
  name = variants.get("dataset", "digits")
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r} for the classifier; choose one of "
                     f"{sorted(DATASETS)} (or build one with for_data(config.data))")
  data = common.base_config().data
  data.dataset = name
  data.image_size, data.channels, data.num_classes, _ = DATASETS[name]
  c = for_data(data)
  if variants.get("smoke"):
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.eval.every = 10
    c.optim.warmup_steps = 5
  c.lock()
  return c
