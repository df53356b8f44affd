"""The embedded default: 8x8 handwritten digits, no download, trains on a laptop CPU.

The 1,797 digits that scikit-learn ships, as the TFDS dataset `digits` built into diffax.
A small U-Net (0.76M parameters) learns them in under 10 minutes on 2 CPU cores.

Run:
  python scripts/train.py --config=configs/digits.py --workdir=workdirs/digits
  python scripts/sample.py --workdir=workdirs/digits --out=workdirs/digits/samples.png

Variants (`--config=configs/digits.py:smoke`): `smoke` shrinks everything to a seconds-long run.
"""

from configs import classifier
from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "digits"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.shuffle_buffer = 2048

  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (4,)
  c.model.num_groups = 8
  c.model.dropout = 0.1

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000
  c.diffusion.prediction = "eps"

  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999

  c.train.num_steps = 3500
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.sample_every = 1000

  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.num_images = 100
  c.sample.batch_size = 100

  # Sample quality every 1,000 steps and at the end (eval/fd, eval/kid, eval/coverage and
  # their real-vs-real floors in metrics.jsonl): 500 DDIM samples in the feature space of a
  # classifier trained first in <workdir>/eval/classifier (configs/classifier.py, ~1 minute).
  c.eval.every = 1000
  c.eval.num_samples = 500
  c.eval.batch_size = 100
  c.eval.classifier = classifier.for_data(c.data)

  if variants.get("smoke"):
    common.smoke(c)
  c.lock()
  return c
