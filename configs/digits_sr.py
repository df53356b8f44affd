"""Super-resolution of the embedded digits, 4x4 -> 8x8 (SR3 with Imagen's augmentation).

The U-Net of `configs/digits.py` conditioned on the 4x4 version of each digit (the 8x8 image
area-downsampled; `model.low_res_size = 4`), bicubic-upsampled and concatenated to x_t. In
training the low-res input is noised to a random level s ~ U[0, 0.2] that the model is told
(`train.low_res_noise`, noise-conditioning augmentation); sampling uses a fixed level
(`sample.noise_level`, 0 by default: a 4x4 digit has no pixel to spare; on the 297 held-out
digits, the test-size run of tests/conftest.py gives 16.0 dB PSNR at level 0 and 15.2 dB at 0.1,
against 13.7 dB for bicubic upsampling). It is the second stage of `configs/cascade_digits.py`.

Run:
  python scripts/train.py --config=configs/digits_sr.py --workdir=workdirs/digits_sr
  python scripts/sample.py --workdir=workdirs/digits_sr --low_res=small.png --out=big.png

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits.get_config()
  c.model.low_res_size = 4
  c.model.attention_resolutions = ()
  c.train.low_res_noise = 0.2
  c.sample.noise_level = 0.0
  c.eval.every = 0  # evaluation draws from noise alone; a super-resolution stage needs low-res inputs
  c.sample.num_images = 64
  c.sample.batch_size = 64
  if variants.get("smoke"):
    common.smoke(c)
  return c
