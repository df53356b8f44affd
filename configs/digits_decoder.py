"""unCLIP's decoder on the embedded digits: a U-Net that draws a digit from its image embedding.

The 8x8 digits U-Net of configs/digits.py reads `cond["embedding"]`, the 384-d embedding of
the image by a trained contrastive stage (configs/digits_clip.py; its tower is frozen and embeds
each batch): projected into the time embedding and, as DALL-E 2's decoder does, into 4 extra
context tokens read by cross-attention (`model.embedding_dim`, `model.embedding_tokens`). One
embedding in ten is dropped to zeros (`train.cond_dropout`) for classifier-free guidance. Its
training grids are variations of the first digits of the data.

Run (after the contrastive stage):
  python scripts/train.py --config=configs/digits_decoder.py --workdir=workdirs/digits_decoder \
      --config.decoder.contrastive_workdir=workdirs/digits_clip

Variants: `smoke` shrinks everything to a seconds-long run.
"""

import ml_collections

from configs import common
from configs import digits


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits.get_config()
  with c.unlocked():
    c.model.embedding_dim = 384          # the contrastive stage's (all-MiniLM-L6-v2's width)
    c.model.embedding_tokens = 4         # DALL-E 2: four extra context tokens
    c.decoder = ml_collections.ConfigDict()
    c.decoder.contrastive_workdir = ""   # required: the trained contrastive stage
  c.model.cross_attention_resolutions = (4,)
  c.model.num_heads = 4
  c.train.cond_dropout = 0.1
  c.eval.every = 0                       # the class-feature evaluation knows no embeddings

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 3.0

  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_heads = 1
    c.model.cross_attention_resolutions = ()
  return c
