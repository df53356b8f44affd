"""Moving MNIST (TFDS `moving_mnist`): unconditional video diffusion on real data, for a GPU/TPU.

TFDS `moving_mnist` (Srivastava et al. 2015) holds 10,000 clips of 20 frames, 64x64, two MNIST
digits bouncing; one split ("test") and no labels. This config reads the first 16 frames of each
clip, at 64x64, with the video U-Net of `configs/moving_digits.py` widened (3x3x3 convolutions,
attention within frames and across frames at 16x16 and 8x8).

It needs the data prepared (TFDS downloads ~800 MB on first use; set --config.data.download=False
to fail at once instead where there is no network). Not run on the 2-core CPU this repository is
developed on (no network there): its data path is tested on TFDS mock data
(tests/test_data_video_audio.py) and its network by parameter count (tests/test_unet_nd.py).
One train step at batch 32 is ~1.1 TFLOP; plan on a GPU.

Run:
  python scripts/train.py --config=configs/moving_mnist.py --workdir=workdirs/moving_mnist
  python scripts/sample.py --workdir=workdirs/moving_mnist --out=workdirs/moving_mnist/s.png
  # frame prediction: the first 8 frames of clips.npz ([N, 16, 64, 64, 1]) given, 8 drawn
  python scripts/sample.py --workdir=workdirs/moving_mnist --init_image=clips.npz \
      --known_frames=0-7

Variants: `smoke` shrinks everything to a seconds-long run (32x32 frames, 4 of them).
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = common.base_config()
  c.data.dataset = "moving_mnist"
  c.data.split = "test"         # the only split TFDS has
  c.data.kind = "video"
  c.data.num_frames = 16
  c.data.image_size = 64
  c.data.channels = 1
  c.data.num_classes = 0        # no labels
  c.data.shuffle_buffer = 2000

  c.model.base_channels = 64
  c.model.channel_mult = (1, 2, 2, 4)
  c.model.num_res_blocks = 2
  c.model.attention_resolutions = (16, 8)
  c.model.num_heads = 4
  c.model.dropout = 0.1

  c.diffusion.schedule = "cosine"
  c.diffusion.num_steps = 1000

  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 1000
  c.optim.ema_decay = 0.9995

  c.train.num_steps = 100_000
  c.train.batch_size = 32
  c.train.checkpoint_every = 2000
  c.train.sample_every = 5000

  c.sample.num_images = 16
  c.sample.batch_size = 16

  if variants.get("smoke"):
    common.smoke(c)
    c.data.image_size = 32
    c.data.num_frames = 4
  c.lock()
  return c
