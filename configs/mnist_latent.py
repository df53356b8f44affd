"""Latent diffusion on MNIST: a class-conditional U-Net (condition dropout 0.1, so classifier-free
guidance works) on the 7x7x4 latents of `configs/mnist_autoencoder.py` (train that first).

7 is odd, so the U-Net cannot downsample the latent: it runs at 7x7 throughout (one level, with
self-attention over the 49 positions); a channel_mult of length > 1 is a clear error naming the
latent shape.

Run:
  python scripts/train.py --config=configs/mnist_autoencoder.py --workdir=workdirs/mnist_ae
  python scripts/train.py --config=configs/mnist_latent.py --workdir=workdirs/mnist_latent
  python scripts/sample.py --workdir=workdirs/mnist_latent --out=workdirs/mnist_latent/s.png

Measured on 2 cores of an AMD EPYC (AVX-512), on the autoencoder of the README's run (scale
factor 0.300, measured): 5,000 steps in 27 minutes of wall time (with --config.eval.every=0;
the cores were shared with a test run part of the time). A logistic regression fit on 20,000
MNIST training digits (91 % right on real test digits) reads 100 % of 100 samples (guidance 3,
DPM-Solver++(2M), 25 Karras steps, labels i % 10) as the requested digit; unguided, every
class appears. `python benchmarks/latent_quality.py --latent=workdirs/mnist_latent`
reproduces this; the README's "Latent diffusion" section shows the grid.

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import mnist


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = mnist.get_config()  # locked: only existing keys change below
  c.latent.autoencoder_workdir = "workdirs/mnist_ae"

  c.model.base_channels = 64
  c.model.channel_mult = (1,)       # 7x7 latents: no downsampling
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (7,)
  c.model.num_groups = 16
  c.model.dropout = 0.1
  c.model.num_classes = 10
  c.train.cond_dropout = 0.1

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 500
  c.optim.ema_decay = 0.999

  c.train.num_steps = 5000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 2500

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  # In-training FD with the same sampler: linspace spacing starts at t=999, where an unclipped
  # (latent) x0 estimate is ill-conditioned (README, "Latent diffusion").
  c.eval.sampler, c.eval.spacing, c.eval.num_steps = "dpmpp_2m", "karras", 25
  c.sample.num_steps = 25
  c.sample.guidance_scale = 3.0
  c.sample.class_label = -1         # image i gets the digit i % 10: one digit per grid column
  c.sample.num_images = 100
  c.sample.batch_size = 100
  c.sample.clip_x0 = False          # latents are unit-variance, not pixels in [-1, 1]

  if variants.get("smoke"):
    common.smoke(c)
    c.model.channel_mult = (1,)
  return c
