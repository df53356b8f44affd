"""Tones: class-conditional audio diffusion on raw waveforms, offline, on a CPU.

The embedded `tones` dataset (SYNTHETIC: 0.256 s notes of 8 pitches C5..C6 at 8 kHz, as pure
tones, with harmonics or as triads, with envelopes and noise; diffax/pipeline/datasets/tones.py),
drawn by the 1-D U-Net, conditioned on the pitch with condition dropout 0.1.

Run:
  python scripts/train.py --config=configs/tones.py --workdir=workdirs/tones
  python scripts/sample.py --workdir=workdirs/tones --out=workdirs/tones/s.png   # + s.wav
  # infilling: keep all but samples 600..999 of a clip and draw them
  python scripts/sample.py --workdir=workdirs/tones --init_image=note.wav \
      --known_samples=:600,1000: --out=workdirs/tones/filled.png

Variants (`--config=configs/tones.py:smoke`): `smoke` shrinks everything to a seconds-long run.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "tones"
  c.data.kind = "audio"
  c.data.length = 2048
  c.data.sample_rate = 8000
  c.data.channels = 1
  c.data.num_classes = 8

  c.model.base_channels = 32
  c.model.channel_mult = (1, 2, 2, 4)
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = (256,)
  c.model.num_heads = 2
  c.model.num_groups = 8
  c.model.dropout = 0.0
  c.model.num_classes = 8

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000

  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.optim.ema_decay = 0.999

  c.train.num_steps = 3000
  c.train.batch_size = 32
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.sample_every = 1000
  c.train.cond_dropout = 0.1

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 25
  c.sample.guidance_scale = 2.0
  c.sample.class_label = -1
  c.sample.num_images = 16
  c.sample.batch_size = 16

  if variants.get("smoke"):
    common.smoke(c)
    c.model.channel_mult = (1, 2, 2, 4)
    c.model.attention_resolutions = ()
  c.lock()
  return c
