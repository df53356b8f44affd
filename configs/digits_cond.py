"""The embedded digits, class-conditional with condition dropout: classifier-free guidance on CPU.

The same 1,797 8x8 digits and U-Net as `configs/digits.py`, with a label embedding
(`model.num_classes = 10`, plus the null label 10) and `train.cond_dropout = 0.1`: one digit in
ten is trained without its label, so the one network is both the conditional and the
unconditional model that classifier-free guidance combines (Ho & Salimans 2022).

Run:
  python scripts/train.py --config=configs/digits_cond.py --workdir=workdirs/digits_cond
  python scripts/sample.py --workdir=workdirs/digits_cond --out=workdirs/digits_cond/samples.png
  python scripts/sample.py --workdir=workdirs/digits_cond --class_label=3 --guidance_scale=0 \
      --out=workdirs/digits_cond/uncond.png

What to expect: training takes about as long as `configs/digits.py` (3,500 steps, ~10 minutes on
2 CPU cores). The default samples (DPM-Solver++(2M), Karras spacing, 25 steps, guidance scale 3)
come out as a 10-column grid whose column k holds the digit k; with `--guidance_scale=0` the same
command draws unconditional digits, whatever the label (see docs/samplers.md).

Variants (`--config=configs/digits_cond.py:smoke`): `smoke` shrinks everything to a seconds-long
run.
"""

from configs import common
from configs import digits


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits.get_config()  # locked: only existing keys change below
  c.model.num_classes = 10
  c.train.cond_dropout = 0.1

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 3.0
  c.sample.class_label = -1     # image i gets the digit i % 10: one digit per grid column
  c.sample.num_images = 100
  c.sample.batch_size = 100

  if variants.get("smoke"):
    common.smoke(c)
  return c
