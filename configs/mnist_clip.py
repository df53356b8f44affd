"""The contrastive stage of unCLIP on MNIST (TFDS `mnist_text`, made offline from a prepared
`mnist`): configs/digits_clip.py's recipe for 28x28 digits, a three-level tower.

Run:
  python scripts/train.py --config=configs/mnist_clip.py --workdir=workdirs/mnist_clip

Then configs/mnist_prior.py and configs/mnist_decoder.py name this workdir. Held-out metric:
eval/zero_shot_accuracy on the 10,000 test digits against "a handwritten 0" ... "a handwritten 9".

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_clip


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits_clip.get_config()  # locked: only existing keys change below
  c.data.dataset = "mnist_text"
  c.data.image_size = 28
  c.data.shuffle_buffer = 10_000
  c.model.channel_mult = (1, 2, 4)   # 28 -> 14 -> 7
  c.train.num_steps = 3000
  c.train.checkpoint_every = 1000
  c.eval.every = 1000
  if variants.get("smoke"):
    c.model.base_channels = 8
    c.model.num_groups = 4
    c.model.hidden_dim = 32
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.optim.warmup_steps = 5
    c.eval.every = 10
  return c
