"""unCLIP's decoder on MNIST: configs/mnist_text.py's 28x28 U-Net reading the image embedding of
configs/mnist_clip.py (time embedding + 4 cross-attention tokens) instead of captions.

Run (after the contrastive stage; a run for an accelerator: the U-Net of mnist_text.py took 2.4 s
a step at 14x14 on 2 busy CPU cores):
  python scripts/train.py --config=configs/mnist_decoder.py --workdir=workdirs/mnist_decoder \
      --config.decoder.contrastive_workdir=workdirs/mnist_clip
  python scripts/sample.py --workdir=workdirs/mnist_prior,workdirs/mnist_decoder \
      --prompt="a handwritten 7" --num_samples=16

Variants: `smoke` shrinks everything to a seconds-long run.
"""

from configs import common
from configs import digits_decoder
from configs import mnist_text


def get_config(arg=None):
  variants = common.parse_arg(arg)
  c = digits_decoder.get_config("smoke" if variants.get("smoke") else None)
  text = mnist_text.get_config("smoke" if variants.get("smoke") else None)
  c.data.update({k: text.data[k] for k in ("image_size", "shuffle_buffer")})
  c.data.dataset = "mnist"
  for key in ("base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
              "cross_attention_resolutions", "num_heads", "num_groups", "dropout"):
    c.model[key] = text.model[key]
  c.optim.update(text.optim)
  c.train.update({k: text.train[k] for k in ("num_steps", "batch_size", "checkpoint_every",
                                             "sample_every")})
  return c
