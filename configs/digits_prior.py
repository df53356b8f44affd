"""unCLIP's diffusion prior on the embedded captioned digits: text embedding -> image embedding.

A residual MLP (`model.name = "mlp"`) denoises the 384-d image embeddings of a trained
contrastive stage (configs/digits_clip.py), conditioned on the embeddings of the images'
captions by the same stage's locked text tower. It predicts x0, the clean embedding, as DALL-E
2's prior does; one caption in ten is dropped for classifier-free guidance. Its evaluation
(eval/prior_accuracy) samples embeddings for "a handwritten 0" ... "a handwritten 9" and counts
those nearest (cosine) to the mean embedding of real held-out images of the prompted digit.

Run (after the contrastive stage):
  python scripts/train.py --config=configs/digits_prior.py --workdir=workdirs/digits_prior \
      --config.prior.contrastive_workdir=workdirs/digits_clip

Variants: `smoke` shrinks everything to a seconds-long run.
"""

import ml_collections

from configs import common
from configs import digits_clip


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.task = "prior"
  c.data.dataset = "digits_text"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.shuffle_buffer = 8192

  c.model.name = "mlp"
  c.model.hidden_dim = 256
  c.model.num_layers = 4
  c.model.dropout = 0.0

  c.prior = ml_collections.ConfigDict()
  c.prior.contrastive_workdir = ""            # required: the trained contrastive stage
  c.prior.prompts = digits_clip.PROMPTS       # the evaluation's prompts, one per class
  c.prior.eval_split = "test"                 # whose images give the class means
  c.prior.eval_samples_per_prompt = 10

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000
  c.diffusion.prediction = "x0"

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.ema_decay = 0.99

  c.train.num_steps = 2000
  c.train.batch_size = 128
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 1
  c.train.sample_every = 0
  c.train.cond_dropout = 0.1

  c.sample.sampler = "ddim"
  c.sample.num_steps = 50
  c.sample.clip_x0 = False                    # embeddings, not pixels
  c.sample.guidance_scale = 2.0

  c.eval.every = 500
  c.eval.metrics = ()

  if variants.get("smoke"):
    c.model.hidden_dim = 32
    c.model.num_layers = 1
    c.diffusion.num_steps = 100
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.optim.warmup_steps = 5
    c.sample.num_steps = 10
    c.prior.eval_samples_per_prompt = 1
    c.eval.every = 10
  c.lock()
  return c
