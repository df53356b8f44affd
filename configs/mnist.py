"""MNIST (TFDS `mnist`), 28x28 grayscale, unconditional.

Needs the TFDS `mnist` dataset prepared (it downloads on first use, or see TFDS's manual_dir).
About 6M parameters; on one GPU it reaches clean digits in roughly 20k steps.

Run:
  python scripts/train.py --config=configs/mnist.py --workdir=workdirs/mnist
  python scripts/sample.py --workdir=workdirs/mnist --out=workdirs/mnist/samples.png

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import classifier
from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10

  c.model.base_channels = 64
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (7,)
  c.model.dropout = 0.1

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9995

  c.train.num_steps = 30_000
  c.train.batch_size = 128
  c.train.checkpoint_every = 2000
  c.train.sample_every = 5000

  # FD/KID of 2,000 samples every 5,000 steps in the space of a classifier trained first in
  # <workdir>/eval/classifier (configs/classifier.py:dataset=mnist).
  c.eval.every = 5000
  c.eval.num_samples = 2000
  c.eval.batch_size = 250
  c.eval.classifier = classifier.for_data(c.data)

  if variants.get("smoke"):
    common.smoke(c)
  c.lock()
  return c
