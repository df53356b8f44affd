r"""Converts pretrained diffusion weights: a local diffusers directory in, or a diffax run out.

  python scripts/convert.py --from_diffusers=ddpm-cifar10-32 --workdir=workdirs/ddpm_cifar10 \
      --dataset=cifar10
  python scripts/sample.py --workdir=workdirs/ddpm_cifar10 --sampler=dpmpp_2m --num_steps=20
  python scripts/evaluate.py --workdir=workdirs/ddpm_cifar10 --inception_weights=pt_inception.pth

  python scripts/convert.py --workdir=workdirs/digits --to_diffusers=exported/digits

  python scripts/convert.py --from_diffusers=stable-diffusion-v1-5 --workdir=workdirs/sd15
  python scripts/sample.py --workdir=workdirs/sd15 --prompt="a watercolor fox" \
      --sampler=dpmpp_2m --num_steps=25 --num_samples=1

--from_diffusers takes a model directory (config.json + diffusion_pytorch_model.safetensors and
a scheduler config) or a pipeline directory (model_index.json, unet/, scheduler/), e.g. a clone
of google/ddpm-cifar10-32, or a Stable Diffusion 1.x / 2.x pipeline directory (unet/, vae/,
text_encoder/, tokenizer/, scheduler/; safetensors weights). Nothing is downloaded.
--to_diffusers writes a DDPMPipeline directory (a pixel-space run) or a StableDiffusionPipeline
directory (a latent run conditioned by a CLIP text encoder, as a converted Stable Diffusion is)
that diffusers' `from_pretrained` loads.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from configs import common
from diffax.pipeline import cli
from diffax.pipeline import convert
from diffax.pipeline.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "The diffax run: written (--from_diffusers) or "
                               "read (--to_diffusers).")
_FROM = flags.DEFINE_string("from_diffusers", None, "A local diffusers model or pipeline "
                            "directory to convert into --workdir.")
_TO = flags.DEFINE_string("to_diffusers", None, "A directory to write --workdir's EMA params "
                          "to, as a diffusers DDPMPipeline or StableDiffusionPipeline.")
_DATASET = flags.DEFINE_string("dataset", "", "--from_diffusers: the TFDS name of the data the "
                               "model was trained on (e.g. cifar10), which scripts/evaluate.py "
                               "compares its samples with.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if bool(_FROM.value) == bool(_TO.value):
    raise ValueError("give exactly one of --from_diffusers=DIR (into --workdir) or "
                     "--to_diffusers=DIR (out of --workdir)")
  workdir = Workdir(_WORKDIR.value)
  if _FROM.value:
    config = convert.from_diffusers(_FROM.value, workdir, common.base_config(),
                                    common.autoencoder_config(), dataset=_DATASET.value)
    text = (f", text encoder {config.text.encoder} (--prompt=...)"
            if config.model.context_dim else "")
    latent = (f", latent space of {config.latent.autoencoder_workdir}"
              if config.latent.autoencoder_workdir else "")
    print(f"wrote {workdir}: {config.model.base_channels}x{tuple(config.model.channel_mult)} "
          f"U-Net, {config.diffusion.schedule} schedule, T={config.diffusion.num_steps}, "
          f"{config.diffusion.prediction} prediction{latent}{text}; sample with "
          f"scripts/sample.py --workdir={workdir}")
  else:
    print(f"wrote {convert.to_diffusers(workdir, _TO.value, common.base_config())}")


if __name__ == "__main__":
  cli.run(main)
