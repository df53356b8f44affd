"""Super-resolution of MNIST, 14x14 -> 28x28 (SR3 with Imagen's noise-conditioning augmentation).

The second stage of the MNIST cascade (`configs/cascade_mnist.py`): a U-Net conditioned on each
digit area-downsampled to 14x14 (`model.low_res_size = 14`), bicubic-upsampled and concatenated
to x_t; the low-res input is noised to a random level s ~ U[0, 0.5] in training
(`train.low_res_noise`) and to a fixed level at sampling (`sample.noise_level`). It reads no
text: the 14x14 image carries the digit.

Run:
  python scripts/train.py --config=configs/mnist_sr.py --workdir=workdirs/mnist_sr

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import mnist


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = mnist.get_config()
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = ()
  c.model.num_groups = 8
  c.model.dropout = 0.0
  c.model.low_res_size = 14
  c.eval.every = 0  # evaluation draws from noise alone; a super-resolution stage needs low-res inputs
  c.train.low_res_noise = 0.5
  c.sample.noise_level = 0.1
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999
  c.train.num_steps = 4000
  c.train.batch_size = 32
  c.train.checkpoint_every = 500
  c.train.sample_every = 2000
  c.sample.num_images = 36
  c.sample.batch_size = 36
  if variants.get("smoke"):
    common.smoke(c)
  return c
