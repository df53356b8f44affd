"""Stable Diffusion pipeline directories <-> diffax's stages.

  from_pipeline(source, workdir, defaults, ae_defaults, scheduler)   # scripts/convert.py
  to_pipeline(workdir, config, out)                                  # --to_diffusers

A StableDiffusionPipeline directory (unet/: UNet2DConditionModel, vae/: AutoencoderKL,
text_encoder/: CLIPTextModel, tokenizer/, scheduler/) is three things to diffax, the stages
latent diffusion composes by workdir:

  WORKDIR/autoencoder/    the VAE, a `task = "autoencoder"` run
  WORKDIR/text_encoder/   the CLIP text encoder with its tokenizer (`diffax.pipeline.text`)
  WORKDIR/                the U-Net, a latent text-conditional diffusion run naming both,
                          with SD's latent scale, SD's text conditioning
                          (`config.text.attend_padding`) and guidance scale 7.5

and a diffax run of that shape goes back out as such a directory.
"""

import os
import shutil

import jax

from diffax.interop import diffusers_unet
from diffax.interop import diffusers_vae
from diffax.pipeline import build
from diffax.pipeline import clip_tokenizer
from diffax.pipeline import diffusers_dirs as dirs
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline import text as text_lib
from diffax.pipeline.workdir import Workdir


def _text_encoder_dir(source: str, out: str) -> None:
  """Writes the pipeline's CLIP text encoder as one directory `text.load` reads: its
  config.json and weights, and tokenizer.json (built from vocab.json + merges.txt, naming the
  pipeline's pad token)."""
  encoder_dir, tokenizer_dir = (os.path.join(source, n) for n in ("text_encoder", "tokenizer"))
  os.makedirs(out, exist_ok=True)
  for name in ("config.json", text_lib.WEIGHTS):
    shutil.copyfile(os.path.join(encoder_dir, name), os.path.join(out, name))
  if os.path.exists(os.path.join(tokenizer_dir, clip_tokenizer.VOCAB)):
    clip_tokenizer.write_tokenizer_json(tokenizer_dir, os.path.join(out, text_lib.TOKENIZER))
  else:
    clip_tokenizer.with_padding(os.path.join(tokenizer_dir, text_lib.TOKENIZER),
                                tokenizer_dir).save(os.path.join(out, text_lib.TOKENIZER))


def from_pipeline(source: str, workdir: Workdir, defaults, autoencoder_defaults,
                  scheduler: dict):
  """Writes a Stable Diffusion pipeline directory as diffax's stages (module docstring).

  Args:
    source: the pipeline directory.
    workdir: the U-Net's run; the autoencoder and text encoder go in its subdirectories.
    defaults, autoencoder_defaults: the base configs of the two runs.
    scheduler: the pipeline's scheduler config.

  Returns:
    The U-Net run's config.

  Raises:
    FileNotFoundError, ValueError: a missing file or unsupported option, named, before
      anything is written.
  """
  if not os.path.exists(os.path.join(source, "model_index.json")):
    raise ValueError(f"{source} holds a UNet2DConditionModel alone; convert its Stable "
                     f"Diffusion pipeline directory (model_index.json, unet/, vae/, "
                     f"text_encoder/, tokenizer/, scheduler/)")
  unet_config, unet_weights = dirs.component(source, "unet", dirs.WEIGHTS)
  vae_config, vae_weights = dirs.component(source, "vae", dirs.WEIGHTS)
  text_config, _ = dirs.component(source, "text_encoder", text_lib.WEIGHTS, load=False)
  tokenizer_dir = os.path.join(source, "tokenizer")
  if not (os.path.exists(os.path.join(tokenizer_dir, clip_tokenizer.VOCAB))
          or os.path.exists(os.path.join(tokenizer_dir, text_lib.TOKENIZER))):
    raise FileNotFoundError(f"{tokenizer_dir} has neither {clip_tokenizer.VOCAB} + "
                            f"{clip_tokenizer.MERGES} nor {text_lib.TOKENIZER}")
  if autoencoder_defaults is None:
    raise ValueError("converting Stable Diffusion needs the autoencoder stage's defaults")
  arch = diffusers_unet.unet_config(unet_config)
  params = diffusers_unet.convert_unet2d(unet_weights, arch)
  size, _, latent_channels = arch.pop("sample_shape")
  ae_arch = diffusers_vae.autoencoder_config(vae_config)
  factor = 2 ** (len(ae_arch["channel_mult"]) - 1)
  image_size, channels = size * factor, ae_arch.pop("sample_shape")[2]
  if ae_arch["latent_channels"] != latent_channels:
    raise ValueError(f"the VAE's latent_channels={ae_arch['latent_channels']} differ from the "
                     f"U-Net's in_channels={latent_channels}")
  ae_params = diffusers_vae.convert_autoencoder(vae_weights, dict(
      ae_arch, sample_shape=(image_size, image_size, channels)))

  ae_workdir = Workdir(os.path.join(workdir.path, "autoencoder"))
  ae = autoencoder_defaults
  ae.data.dataset = ""
  ae.data.image_size, ae.data.channels = image_size, channels
  for key, value in ae_arch.items():
    ae.model[key] = value
  dirs.save_as_run(ae_workdir, ae, {"autoencoder": ae_params},
                   lambda rng: {"autoencoder": build.autoencoder(ae).init_fn(rng)})

  max_length = int(text_config.get("max_position_embeddings", 77))
  text_dir = os.path.join(os.path.abspath(workdir.path), "text_encoder")
  _text_encoder_dir(source, text_dir)

  config = defaults
  config.data.image_size, config.data.channels = image_size, channels
  for key, value in arch.items():
    config.model[key] = value
  # The network's shapes, taken before attend_padding is set: with it, building the model
  # reads the text encoder (its null condition), which the shapes do not need.
  init_fn = build.model(config, shape=(size, size, latent_channels)).init_fn
  config.latent.autoencoder_workdir = os.path.abspath(ae_workdir.path)
  config.latent.autoencoder_step = 0
  config.latent.scale_factor = diffusers_vae.latent_scale_factor(vae_config)
  config.text.encoder, config.text.max_length = text_dir, max_length
  config.text.attend_padding = True
  config.sample.guidance_scale = 7.5
  config.train.cond_dropout = 0.1  # SD drops 10 % of captions: its unconditional model is trained
  dirs.diffusion_settings(scheduler, config)
  dirs.save_as_run(workdir, config, params, init_fn)
  return config


def to_pipeline(workdir: Workdir, config, out: str) -> str:
  """Writes a latent text run conditioned by a CLIP text encoder with SD's conditioning as a
  StableDiffusionPipeline directory (`from_pipeline`'s inverse; DDIM scheduler, SD's
  `steps_offset=1`), loadable with `StableDiffusionPipeline.from_pretrained(out)`. The
  transformers' projections are written as Linear layers (SD 2's layout; SD 1's 1x1 convs hold
  the same matrices).

  Raises:
    ValueError: the run's text encoder is not CLIP with `config.text.attend_padding`, or its
      U-Net or autoencoder has no diffusers equivalent.
  """
  text_dir = config.text.encoder
  text_config = (dirs.read_json(os.path.join(text_dir, "config.json"))
                 if text_dir and os.path.isdir(text_dir) else {})
  if text_config.get("model_type") != "clip_text_model" or not config.text.attend_padding:
    raise ValueError(f"--workdir={workdir} is conditioned by {text_dir or 'the default BERT'}"
                     f"{'' if config.text.attend_padding else ' without SD padding'}; a "
                     f"StableDiffusionPipeline needs a CLIP text encoder and "
                     f"config.text.attend_padding=True")
  mesh = parallel.create_mesh()
  net, _, space = sample_lib.load_model(config, mesh)
  params, _ = sample_lib.load_ema_params(workdir, config, net, mesh=mesh)
  arch = {k: v for k, v in config.model.items() if k not in build.MODEL_KEYS}
  unet_config, unet_weights = diffusers_unet.unet_to_diffusers(
      dict(arch, sample_shape=net.sample_shape), jax.device_get(params))
  ae_config = space.workdir.load_config()
  ae_arch = {k: v for k, v in ae_config.model.items() if k not in build.MODEL_KEYS}
  vae_config, vae_weights = diffusers_vae.autoencoder_to_diffusers(
      dict(ae_arch, sample_shape=space.image_shape), jax.device_get(space.params),
      scaling_factor=config.latent.scale_factor)
  dirs.save_model(os.path.join(out, "unet"), unet_config, unet_weights)
  dirs.save_model(os.path.join(out, "vae"), dict(vae_config, _class_name="AutoencoderKL"),
                  vae_weights)
  os.makedirs(os.path.join(out, "text_encoder"), exist_ok=True)
  for name in os.listdir(text_dir):
    if name == "config.json" or name.endswith((".safetensors", ".safetensors.index.json")):
      shutil.copyfile(os.path.join(text_dir, name), os.path.join(out, "text_encoder", name))
  _write_tokenizer(os.path.join(text_dir, text_lib.TOKENIZER), os.path.join(out, "tokenizer"),
                   config.text.max_length)
  dirs.write_json(os.path.join(out, "scheduler", "scheduler_config.json"),
                  dirs.scheduler_config(config, "DDIMScheduler", set_alpha_to_one=False,
                                        steps_offset=1, timestep_spacing="leading"))
  dirs.write_json(os.path.join(out, "model_index.json"), {
      "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
      "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
      "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"],
      "safety_checker": [None, None], "feature_extractor": [None, None],
      "requires_safety_checker": False})
  return out


def _write_tokenizer(tokenizer_json: str, out: str, max_length: int) -> None:
  """tokenizer.json and the tokenizer_config.json transformers' CLIPTokenizer loads it with."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  shutil.copyfile(tokenizer_json, os.path.join(out, text_lib.TOKENIZER))
  padding = tokenizers.Tokenizer.from_file(tokenizer_json).padding
  special = dict(clip_tokenizer.SPECIAL_TOKENS, pad_token=padding["pad_token"])
  dirs.write_json(os.path.join(out, "tokenizer_config.json"),
                  dict(special, tokenizer_class="CLIPTokenizer", model_max_length=max_length))
