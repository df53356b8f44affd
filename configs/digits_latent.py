"""Latent diffusion on the embedded 8x8 digits: a class-conditional U-Net on the 4x4x2 latents
of `configs/digits_autoencoder.py` (train that first), decoded to pixels when sampled.

Run:
  python scripts/train.py --config=configs/digits_autoencoder.py --workdir=workdirs/digits_ae
  python scripts/train.py --config=configs/digits_latent.py --workdir=workdirs/digits_latent \
      --config.latent.autoencoder_workdir=workdirs/digits_ae
  python scripts/sample.py --workdir=workdirs/digits_latent --out=workdirs/digits_latent/s.png

Measured on this machine (2 shared cores, load average 10-13 from other jobs), commit 68dcbde,
on the autoencoder of configs/digits_autoencoder.py: 3,500 steps in 894 s of wall time; scale
factor 0.166 (measured, saved in config.json). Judged by a logistic regression fit on the 1,500
training digits (92 % right on the 297 real test digits), 100 samples with labels i % 10
(DPM-Solver++(2M), 25 Karras steps): at guidance 3, 99 % are read as the requested digit; at
guidance 0 (unconditional), 12 % (chance: 10 %) and every class appears (4 to 14 times per 100).
`python benchmarks/latent_quality.py --latent=workdirs/digits_latent` reproduces these.

Variants (`--config=configs/digits_latent.py:smoke`): `smoke` shrinks everything to a
seconds-long run.
"""

from configs import common
from configs import digits_cond


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits_cond.get_config()  # locked: only existing keys change below
  c.latent.autoencoder_workdir = "workdirs/digits_ae"  # configs/digits_autoencoder.py's run

  # The latents are 4x4: one downsampling to 2x2, attention at both resolutions.
  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (2,)
  c.model.num_groups = 8
  c.model.dropout = 0.1

  c.sample.clip_x0 = False      # latents are unit-variance, not pixels in [-1, 1]
  # In-training FD with the sampling settings: linspace spacing starts at t=999, where an
  # unclipped (latent) x0 estimate is ill-conditioned (README, "Latent diffusion").
  c.eval.sampler, c.eval.spacing, c.eval.num_steps = "dpmpp_2m", "karras", 25

  if variants.get("smoke"):
    common.smoke(c)
  return c
