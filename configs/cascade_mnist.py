"""The MNIST cascade: text -> 14x14 digits -> 28x28 digits (Imagen, SR3), two trained workdirs.

Read by `scripts/sample.py --cascade=configs/cascade_mnist.py`; see `configs/cascade_digits.py`
for the format.

  base   configs/mnist_text.py:base14, text-conditional 14x14 MNIST, guided (w = 3)
  sr     configs/mnist_sr.py, 14x14 -> 28x28, its input noised to level 0.1

Train the stages, then sample:
  python scripts/train.py --config=configs/mnist_text.py:base14 --workdir=workdirs/mnist_text14
  python scripts/train.py --config=configs/mnist_sr.py --workdir=workdirs/mnist_sr
  python scripts/sample.py --cascade=configs/cascade_mnist.py --out=mnist_cascade.png
"""

import ml_collections

from configs import common
from configs import digits_text


def get_config(arg=None):
  common.parse_arg(arg, allowed=())
  c = ml_collections.ConfigDict()
  c.stages = ("base", "sr")
  c.base = ml_collections.ConfigDict()
  c.base.workdir = "workdirs/mnist_text14"
  c.base.sample = ml_collections.ConfigDict(
      dict(sampler="dpmpp_2m", spacing="karras", num_steps=25, guidance_scale=3.0,
           threshold=0.995))
  c.sr = ml_collections.ConfigDict()
  c.sr.workdir = "workdirs/mnist_sr"
  c.sr.sample = ml_collections.ConfigDict(
      dict(sampler="dpmpp_2m", spacing="karras", num_steps=25, noise_level=0.1,
           threshold=0.995))
  c.prompts = digits_text.PROMPTS
  c.num_images = 50
  c.lock()
  return c
