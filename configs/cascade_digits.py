"""The digits cascade (Imagen, SR3): text -> 4x4 digits -> 8x8 digits, two trained workdirs.

Not a training config: `scripts/sample.py --cascade=configs/cascade_digits.py` reads it. Each
stage names the workdir of a run trained on its own and the `config.sample` fields it changes
for this cascade (anything else comes from the run's saved config):

  base   configs/digits_text.py:base4, text-conditional 4x4 digits, guided (w = 3)
  sr     configs/digits_sr.py, 4x4 -> 8x8, its input noised to level 0.1 (Imagen's
         noise-conditioning augmentation)

Dynamic thresholding (Imagen) is on at both stages.

Train the stages, then sample:
  python scripts/train.py --config=configs/digits_text.py:base4 --workdir=workdirs/digits_text4
  python scripts/train.py --config=configs/digits_sr.py --workdir=workdirs/digits_sr
  python scripts/sample.py --cascade=configs/cascade_digits.py --out=cascade.png \
      [--cascade.base.workdir=DIR --cascade.sr.sample.noise_level=0.2 --prompt=...]
"""

import ml_collections

from configs import common
from configs import digits_text


def get_config(arg=None):
  common.parse_arg(arg, allowed=())
  c = ml_collections.ConfigDict()
  c.stages = ("base", "sr")     # the sections below, in the order they run
  c.base = ml_collections.ConfigDict()
  c.base.workdir = "workdirs/digits_text4"
  c.base.sample = ml_collections.ConfigDict(
      dict(sampler="dpmpp_2m", spacing="karras", num_steps=25, guidance_scale=3.0,
           threshold=0.995))
  c.sr = ml_collections.ConfigDict()
  c.sr.workdir = "workdirs/digits_sr"
  c.sr.sample = ml_collections.ConfigDict(
      dict(sampler="dpmpp_2m", spacing="karras", num_steps=25, noise_level=0.1,
           threshold=0.995))
  c.prompts = digits_text.PROMPTS
  c.num_images = 50
  c.lock()
  return c
