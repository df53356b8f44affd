"""The first stage of latent diffusion on the embedded 8x8 digits: a KL autoencoder, f=2.

8x8x1 digits <-> 4x4x2 latents (half as many numbers as pixels). No download; trains on a laptop
CPU in minutes. `configs/digits_latent.py` trains the diffusion model in its latent space.

Run:
  python scripts/train.py --config=configs/digits_autoencoder.py --workdir=workdirs/digits_ae
  python scripts/train.py --config=configs/digits_latent.py --workdir=workdirs/digits_latent \
      --config.latent.autoencoder_workdir=workdirs/digits_ae

Measured on this machine (2 cores of an AMD EPYC with AVX-512, shared: load average 16-19 from
other jobs during the run; not measured on a quiet machine), commit 68dcbde: 2,000 steps in
516 s of wall time, compilation and grids included; held-out PSNR
27.7 dB on all 297 test digits (`python benchmarks/latent_quality.py
--autoencoder=workdirs/digits_ae`), where a 32-component PCA, as many numbers as the latent,
gives 26.4 dB. The KL term stays large (750 nats per image at the end, kl_weight 1e-6), as in LDM:
the latents are far from N(0, I) in scale, which the latent run's scale factor corrects.

Variants (`--config=configs/digits_autoencoder.py:smoke`): `smoke` shrinks everything to a
seconds-long run.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.autoencoder_config()
  c.data.dataset = "digits"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.shuffle_buffer = 2048

  c.model.base_channels = 32
  c.model.channel_mult = (1, 2)     # f = 2: 8x8 -> 4x4
  c.model.num_res_blocks = 1
  c.model.latent_channels = 2
  c.model.mid_attention = True
  c.model.num_groups = 8

  c.autoencoder.reconstruction = "l1"
  c.autoencoder.kl_weight = 1e-6
  c.autoencoder.eval_split = "test"
  c.autoencoder.num_images = 32

  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.999

  c.train.num_steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.sample_every = 500

  if variants.get("smoke"):
    common.smoke(c)
  c.lock()
  return c
