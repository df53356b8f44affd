"""The first stage of latent diffusion on MNIST (TFDS `mnist`): a KL autoencoder, f=4.

28x28x1 digits <-> 7x7x4 latents (a quarter as many numbers as pixels). `configs/mnist_latent.py`
trains the diffusion model in its latent space. Needs the TFDS `mnist` dataset prepared (it
downloads on first use; offline, see TFDS's manual_dir).

Run:
  python scripts/train.py --config=configs/mnist_autoencoder.py --workdir=workdirs/mnist_ae

Measured on 2 cores of an AMD EPYC (AVX-512) shared with a test run: 3,000 steps in 48 minutes
of wall time; held-out PSNR 27.4 dB at step 1,000, 29.4 at 2,000, 30.3 at 3,000 (the 32 test
digits of each grid). The README's "Latent diffusion" section shows the last grid.

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.autoencoder_config()
  c.data.dataset = "mnist"
  c.data.image_size = 28
  c.data.channels = 1
  c.data.num_classes = 10

  c.model.base_channels = 16
  c.model.channel_mult = (1, 2, 4)  # f = 4: 28x28 -> 14x14 -> 7x7
  c.model.num_res_blocks = 1
  c.model.latent_channels = 4
  c.model.mid_attention = True      # over the 7x7 positions
  c.model.num_groups = 8

  c.autoencoder.reconstruction = "l1"
  c.autoencoder.kl_weight = 1e-6
  c.autoencoder.eval_split = "test"
  c.autoencoder.num_images = 32

  c.optim.learning_rate = 1e-3
  c.optim.ema_decay = 0.999

  c.train.num_steps = 3000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.checkpoint_every = 1000
  c.train.sample_every = 1000

  if variants.get("smoke"):
    common.smoke(c)
  c.lock()
  return c
