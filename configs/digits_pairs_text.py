"""Two digits side by side, captioned by position: text that a class label cannot express.

Dataset `digits_pairs_text`: two embedded digits on an 8x16 canvas, captioned "a 3 to the left
of a 7" or, for the same image, "a 7 to the right of a 3" (and paraphrases), so the model must
read word order. Otherwise `configs/digits_text.py`: a frozen all-MiniLM-L6-v2, cross-attention,
caption dropout for classifier-free guidance.

Run:
  python scripts/train.py --config=configs/digits_pairs_text.py --workdir=workdirs/digits_pairs
  python scripts/sample.py --workdir=workdirs/digits_pairs --prompt="a 3 to the left of a 7" \
      --prompt="a 7 to the left of a 3" --num_samples=16 --out=workdirs/digits_pairs/pairs.png

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_text

PROMPTS = ("a 3 to the left of a 7", "a 7 to the left of a 3", "a 1 to the right of a 0",
           "a 0 to the right of a 1", "a 5 to the left of a 2", "a 2 to the left of a 5")


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits_text.get_config()
  c.data.dataset = "digits_pairs_text"
  c.data.image_size = 8
  c.data.image_width = 16
  c.train.num_steps = 5000
  c.sample.prompts = PROMPTS
  c.sample.num_images = 60
  c.sample.batch_size = 60
  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_heads = 1
    c.model.cross_attention_resolutions = ()
  return c
