"""Two MNIST digits side by side (TFDS `mnist_pairs_text`, 28x56), captioned by position.

`configs/digits_pairs_text.py` on MNIST: "a 3 to the left of a 7" / "a 7 to the right of a 3".
The default trains at half size, 14x28 (the data pipeline area-downsamples), to fit a CPU.

Run:
  python scripts/train.py --config=configs/mnist_pairs_text.py --workdir=workdirs/mnist_pairs
  python scripts/sample.py --workdir=workdirs/mnist_pairs --prompt="a 3 to the left of a 7"

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_pairs_text
from configs import mnist_text


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = mnist_text.get_config("base14")
  c.data.dataset = "mnist_pairs_text"
  c.data.image_size = 14
  c.data.image_width = 28
  c.train.num_steps = 10_000
  c.sample.prompts = digits_pairs_text.PROMPTS
  c.sample.num_images = 36
  c.sample.batch_size = 36
  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_heads = 1
    c.model.cross_attention_resolutions = ()
  return c
