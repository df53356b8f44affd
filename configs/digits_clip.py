"""The contrastive stage of unCLIP on the embedded captioned digits: a CLIP image tower.

A small conv tower with a projection (`model.name = "image_encoder"`) learns, with CLIP's
symmetric InfoNCE loss and learned temperature, to embed the 8x8 digits of `digits_text` next
to the frozen all-MiniLM-L6-v2 embeddings of their captions (locked-text tuning: the text tower
is never trained, so the image embeddings are 384-d, its width). Its held-out metric is the
zero-shot accuracy of matching the 297 test digits to the ten prompts "a handwritten 0" ...
"a handwritten 9" (eval/zero_shot_accuracy in metrics.jsonl).

Run:
  python scripts/train.py --config=configs/digits_clip.py --workdir=workdirs/digits_clip

The prior (configs/digits_prior.py) and decoder of unCLIP name this workdir.

Variants: `smoke` shrinks everything to a seconds-long run.
"""

import ml_collections

from configs import common

PROMPTS = tuple(f"a handwritten {d}" for d in range(10))


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.task = "contrastive"
  c.data.dataset = "digits_text"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.shuffle_buffer = 8192

  c.model.name = "image_encoder"
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)    # widths: base x mult
  c.model.num_groups = 8
  c.model.attention_resolutions = ()
  c.model.hidden_dim = 256
  c.model.embedding_dim = 384      # the locked text tower's width (all-MiniLM-L6-v2)

  c.text.encoder = ""              # the default: all-MiniLM-L6-v2
  c.text.max_length = 16

  c.contrastive = ml_collections.ConfigDict()
  c.contrastive.init_temperature = 0.07   # CLIP's; learned from there
  c.contrastive.prompts = PROMPTS         # zero-shot classes, one per label
  c.contrastive.eval_split = "test"       # held-out digits (held-out caption phrasings)

  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 50
  c.optim.ema_decay = 0.99

  c.train.num_steps = 1000
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.sample_every = 0
  c.eval.every = 250
  c.eval.metrics = ()

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
  c.lock()
  return c
