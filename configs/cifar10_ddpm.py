"""The DDPM paper's CIFAR-10 recipe (Ho et al. 2020, sec. 4 and appendix B).

The 35.7M-parameter U-Net (35,746,307: base 128, multipliers 1,2,2,2, two residual blocks per
level, attention at 16x16, dropout 0.1, the time embedding added to each block's features),
linear schedule beta 1e-4..0.02 over T = 1000, eps prediction, Adam at 2e-4 with 5,000 warmup
steps, batch 128, gradient clipping at 1, EMA 0.9999, random horizontal flips, 800k steps. The paper reports FID 3.17 and IS 9.46 (unconditional, 50k samples, 1,000-step
ancestral sampling); its TPU v3-8 trained at 21 steps/s.

Run (a TPU or GPU host; needs TFDS `cifar10` prepared):
  python scripts/train.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm
  python scripts/sample.py --workdir=workdirs/cifar10_ddpm --sampler=ddpm --num_steps=1000 \
      --num_samples=64 --out=workdirs/cifar10_ddpm/samples.png

Variants: `half` uses base width 64 (8,952,067 parameters, the network benchmarks/ times);
`smoke` shrinks everything.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, allowed=("smoke", "half"))
  c = common.base_config()
  c.data.dataset = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True

  c.model.base_channels = 64 if variants.get("half") else 128
  c.model.channel_mult = (1, 2, 2, 2)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16,)
  c.model.num_heads = 1
  c.model.dropout = 0.1
  c.model.num_groups = 32
  c.model.scale_shift = False     # DDPM adds the time embedding (ADM's scale-shift is 7 % larger)

  c.diffusion.schedule = "linear"
  c.diffusion.num_steps = 1000
  c.diffusion.beta_start = 1e-4
  c.diffusion.beta_end = 0.02
  c.diffusion.prediction = "eps"

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 5000
  c.optim.weight_decay = 0.0      # plain Adam, as in the paper
  c.optim.grad_clip_norm = 1.0
  c.optim.ema_decay = 0.9999

  c.train.num_steps = 800_000
  c.train.batch_size = 128
  c.train.log_every = 100
  c.train.checkpoint_every = 10_000
  c.train.keep_checkpoints = 3
  c.train.sample_every = 50_000

  c.sample.sampler = "ddpm"
  c.sample.num_steps = 1000
  c.sample.clip_x0 = True

  # FID/KID with pytorch-fid's Inception: give its weights and an interval to track them, e.g.
  # --config.eval.every=50000 --config.eval.inception_weights=pt_inception-2015-12-05-6726825d.pth
  c.eval.features = "inception"
  c.eval.metrics = ("fd", "kid")
  c.eval.num_samples = 10_000
  c.eval.batch_size = 500
  c.eval.sampler = "ddim"
  c.eval.num_steps = 100

  if variants.get("smoke"):
    common.smoke(c)
  c.lock()
  return c
