"""Moving digits: class-conditional video diffusion, offline, on a CPU.

The embedded `moving_digits` dataset (SYNTHETIC: an 8x8 digit of `digits` bouncing in a 16x16
frame, 8 frames; diffax/pipeline/datasets/moving_digits.py), drawn by the video U-Net: (2+1)-D
convolutions, attention within each frame then across frames, conditioned on the digit's label
with condition dropout 0.1 (classifier-free guidance).

Run:
  python scripts/train.py --config=configs/moving_digits.py --workdir=workdirs/moving_digits
  python scripts/sample.py --workdir=workdirs/moving_digits --out=workdirs/moving_digits/s.png
  # frame prediction: keep the first 4 frames of clips, draw the last 4
  python scripts/sample.py --workdir=workdirs/moving_digits --init_image=clips.npz \
      --known_frames=0-3 --out=workdirs/moving_digits/predicted.png

Variants (`--config=configs/moving_digits.py:smoke`): `smoke` shrinks everything to a
seconds-long run.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "moving_digits"
  c.data.kind = "video"
  c.data.num_frames = 8
  c.data.image_size = 16
  c.data.channels = 1
  c.data.num_classes = 10

  c.model.base_channels = 16
  c.model.channel_mult = (1, 2, 2)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (8, 4)
  c.model.num_heads = 2
  c.model.num_groups = 8
  c.model.dropout = 0.0
  c.model.num_classes = 10

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000
  # v-prediction (Salimans & Ho 2022), as Video Diffusion Models use: with eps the x0 estimate
  # at the noisiest steps divides the network's error by sqrt(alpha-bar) ~ 0.006, and half of
  # the sampled clips came out grey or white (measured on a 600-step run); with v, none.
  c.diffusion.prediction = "v"

  c.optim.learning_rate = 2e-3
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999

  c.train.num_steps = 3000
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.sample_every = 500
  c.train.cond_dropout = 0.1

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 2.0
  c.sample.class_label = -1
  c.sample.num_images = 20
  c.sample.batch_size = 20

  if variants.get("smoke"):
    common.smoke(c)
    c.model.num_groups = 4
  c.lock()
  return c
