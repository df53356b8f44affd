"""MNIST with captions (TFDS `mnist_text`, made offline from a prepared `mnist`): text-to-image.

Each MNIST digit captioned once from the templates of `configs/digits_text.py` (the test split
with held-out phrasings); the frozen all-MiniLM-L6-v2 encodes the captions once, the U-Net reads
them through cross-attention, one caption in ten is dropped for classifier-free guidance.

Run (28x28):
  python scripts/train.py --config=configs/mnist_text.py --workdir=workdirs/mnist_text
  python scripts/sample.py --workdir=workdirs/mnist_text --prompt="a handwritten seven"

Variants: `base14` is the 14x14 text-conditional base of the MNIST cascade
(`configs/cascade_mnist.py`, with `configs/mnist_sr.py` bringing it to 28x28): a smaller U-Net
(2.1M parameters; 2.4 s a step on 2 busy CPU cores, so a run for an accelerator); `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_text


def get_config(arg=None):
  variants = common.parse_arg(arg, allowed=("smoke", "base14"))
  c = digits_text.get_config()
  c.data.dataset = "mnist_text"
  c.data.image_size = 28
  c.data.shuffle_buffer = 10_000

  c.model.base_channels = 64
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (7,)
  c.model.cross_attention_resolutions = (14, 7)
  c.model.num_heads = 4
  c.model.num_groups = 32
  c.model.dropout = 0.1

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9995
  c.train.num_steps = 30_000
  c.train.batch_size = 128
  c.train.checkpoint_every = 1000
  c.train.sample_every = 5000
  c.sample.num_images = 50
  c.sample.batch_size = 50

  if variants.get("base14"):
    c.data.image_size = 14
    c.model.base_channels = 32
    c.model.channel_mult = (1, 2)
    c.model.num_groups = 8
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.train.num_steps = 6000
    c.train.batch_size = 64
    c.train.sample_every = 2000
  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_heads = 1
    c.model.cross_attention_resolutions = ()
  return c
