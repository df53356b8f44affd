"""Speech Commands (TFDS `speech_commands`): class-conditional raw-waveform diffusion on real
audio, for a GPU/TPU.

TFDS `speech_commands` (Warden 2018): about 100,000 one-second utterances at 16 kHz of 12 labels
(yes, no, up, down, left, right, on, off, stop, go, silence, unknown). The model draws 16,000
samples (clips shorter than a second are zero-padded, as the data pipeline does) with the 1-D
U-Net (kernel 3, five halvings to 500 positions, attention at 1,000 and 500), conditioned on the
word with condition dropout 0.1 for classifier-free guidance.

Why this set: it is the standard benchmark of waveform diffusion (DiffWave and WaveGrad's SC09
is its ten digit words; here its own 12 labels), it is one second long, and TFDS downloads
2.4 GB. NSynth (TFDS `nsynth`, 4 s notes labelled by pitch, closer to the offline `tones`) is
about 25 GB and four times longer per example. Raw waveforms rather than log-mel spectrograms:
samples are directly playable WAV files, with no vocoder to train or approximate.

Not run on the 2-core CPU this repository is developed on (no network there): its data path is
tested on TFDS mock data (tests/test_data_video_audio.py) and its network by parameter count
(tests/test_unet_nd.py).

Run:
  python scripts/train.py --config=configs/speech_commands.py --workdir=workdirs/speech
  python scripts/sample.py --workdir=workdirs/speech --class_label=0 --out=workdirs/speech/yes.png
  # infilling: keep all of a recording but 0.4 s .. 0.6 s and draw that span
  python scripts/sample.py --workdir=workdirs/speech --init_image=word.wav \
      --known_samples=:6400,9600:

Variants: `smoke` shrinks everything to a seconds-long run (2,048-sample clips).
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "speech_commands"
  c.data.kind = "audio"
  c.data.sample_rate = 16_000
  c.data.length = 16_000
  c.data.channels = 1
  c.data.num_classes = 12

  c.model.base_channels = 64
  c.model.channel_mult = (1, 1, 2, 2, 4, 4)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (1000, 500)
  c.model.num_heads = 4
  c.model.dropout = 0.1
  c.model.num_classes = 12

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9995

  c.train.num_steps = 200_000
  c.train.batch_size = 32
  c.train.checkpoint_every = 2000
  c.train.sample_every = 5000
  c.train.cond_dropout = 0.1

  c.sample.sampler = "dpmpp_2m"
  c.sample.spacing = "karras"
  c.sample.num_steps = 50
  c.sample.guidance_scale = 2.0
  c.sample.num_images = 12
  c.sample.batch_size = 12

  if variants.get("smoke"):
    common.smoke(c)
    c.data.length = 2048
    c.model.channel_mult = (1, 2, 2, 2, 2, 2)
    c.model.num_classes = 12
  c.lock()
  return c
