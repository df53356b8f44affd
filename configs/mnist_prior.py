"""unCLIP's prior on MNIST: configs/digits_prior.py over the embeddings of configs/mnist_clip.py.

Run (after the contrastive stage):
  python scripts/train.py --config=configs/mnist_prior.py --workdir=workdirs/mnist_prior \
      --config.prior.contrastive_workdir=workdirs/mnist_clip

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_prior


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits_prior.get_config("smoke" if variants.get("smoke") else None)
  c.data.dataset = "mnist_text"
  c.data.image_size = 28
  c.data.shuffle_buffer = 10_000
  if not variants.get("smoke"):
    c.train.num_steps = 5000
  return c
