"""Pretrained weights in and out: a local diffusers directory <-> a diffax workdir.

  from_diffusers(source, workdir, defaults, ae_defaults)   # scripts/convert.py --from_diffusers
  to_diffusers(workdir, out, defaults)                     # scripts/convert.py --to_diffusers

A converted workdir is like a trained run: its config.json describes the network, schedule and
sampler defaults (taken from the scheduler config), and checkpoint 0 holds the weights as both
params and EMA params, so `scripts/sample.py --workdir=...` samples it with any diffax sampler.
Nothing is downloaded: the source is a directory on disk, either a model directory
(`config.json` + `diffusion_pytorch_model.safetensors`, and a `scheduler_config.json` beside it
or in `../scheduler/`) or a pipeline directory (`model_index.json`, `unet/`, `scheduler/`).

A Stable Diffusion pipeline directory (a UNet2DConditionModel with `vae/`, `text_encoder/` and
`tokenizer/`) becomes the stages latent diffusion composes: the VAE as an autoencoder run in
WORKDIR/autoencoder, the CLIP text encoder in WORKDIR/text_encoder, and the U-Net as a latent
text-conditional run in WORKDIR that names both (`stable_diffusion`); such a run goes back out
as a StableDiffusionPipeline directory.
"""

import os

import jax

from diffax.interop import diffusers_unet
from diffax.pipeline import build
from diffax.pipeline import diffusers_dirs as dirs
from diffax.pipeline import latent as latent_lib
from diffax.pipeline import sample as sample_lib
from diffax.pipeline import stable_diffusion
from diffax.pipeline.workdir import Workdir


def from_diffusers(source: str, workdir: Workdir, defaults, autoencoder_defaults=None, *,
                   dataset: str = ""):
  """Converts a local diffusers directory into a workdir: a UNet2DModel (model or pipeline
  directory), or a Stable Diffusion pipeline (`stable_diffusion`).

  Args:
    source: the diffusers directory.
    workdir: where the diffax run is written (must not hold a run yet).
    defaults: the base config (configs/common.py's `base_config()`) to fill in.
    autoencoder_defaults: the autoencoder stage's (`autoencoder_config()`), for Stable
      Diffusion.
    dataset: the TFDS name of the data the model was trained on (`config.data.dataset`,
      which evaluation compares samples with); "" for none.

  Returns:
    The written config.

  Raises:
    FileNotFoundError, ValueError: a missing file or an unsupported option, named.
  """
  if os.path.exists(workdir.config):
    raise ValueError(f"--workdir={workdir} already holds a run ({workdir.config}); choose a "
                     f"new directory")
  model_dir, scheduler_path = dirs.locate(source)
  unet_config = dirs.read_json(os.path.join(model_dir, "config.json"))
  kind = unet_config.get("_class_name", "UNet2DModel")
  if kind == diffusers_unet.CONDITION_MODEL:
    defaults.data.dataset = dataset
    return stable_diffusion.from_pipeline(source, workdir, defaults, autoencoder_defaults,
                                          dirs.read_json(scheduler_path))
  if kind != "UNet2DModel":
    raise ValueError(f"{model_dir} holds a {kind}; diffax converts UNet2DModel (DDPM) and "
                     f"UNet2DConditionModel (Stable Diffusion) U-Nets")
  arch = diffusers_unet.unet_config(unet_config)
  params = diffusers_unet.convert_unet2d(dirs.load_weights(model_dir), arch)
  config = defaults
  height, width, channels = arch.pop("sample_shape")
  if height != width:
    raise ValueError(f"sample_size {height}x{width}: diffax's image configs are square")
  config.data.dataset = dataset
  config.data.image_size, config.data.channels = height, channels
  for key, value in arch.items():
    config.model[key] = value
  dirs.diffusion_settings(dirs.read_json(scheduler_path), config)
  dirs.save_as_run(workdir, config, params)
  return config


def to_diffusers(workdir: Workdir, out: str, defaults) -> str:
  """Writes a diffax run's EMA params as a diffusers pipeline directory: a DDPMPipeline
  (`unet/`, `scheduler/`, `model_index.json`) for a pixel-space U-Net, loadable with
  `DDPMPipeline.from_pretrained(out)`; a StableDiffusionPipeline for a latent run conditioned by
  a CLIP text encoder (`stable_diffusion.to_pipeline`).

  Returns:
    `out`.

  Raises:
    ValueError: a network or schedule diffusers cannot express.
  """
  config = workdir.load_config(defaults=defaults)
  if latent_lib.enabled(config) and config.model.get("context_dim"):
    return stable_diffusion.to_pipeline(workdir, config, out)
  if config.model.get("context_dim") or latent_lib.enabled(config):
    raise ValueError(f"--workdir={workdir} is a text-conditional pixel run or an unconditional "
                     f"latent run; --to_diffusers writes DDPMPipelines (pixel-space, "
                     f"unconditional or class models) and StableDiffusionPipelines (latent runs "
                     f"conditioned by a CLIP text encoder)")
  net = build.model(config)
  params, _ = sample_lib.load_ema_params(workdir, config, net)
  arch = {k: v for k, v in config.model.items() if k not in build.MODEL_KEYS}
  arch["sample_shape"] = net.sample_shape
  unet_config, state_dict = diffusers_unet.unet_to_diffusers(arch, jax.device_get(params))
  dirs.save_model(os.path.join(out, "unet"), unet_config, state_dict)
  dirs.write_json(os.path.join(out, "scheduler", "scheduler_config.json"),
                  dirs.scheduler_config(config, "DDPMScheduler", variance_type="fixed_small",
                                        timestep_spacing="leading"))
  dirs.write_json(os.path.join(out, "model_index.json"),
                  {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
                   "scheduler": ["diffusers", "DDPMScheduler"]})
  return out
