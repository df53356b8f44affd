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
text-conditional run in WORKDIR that names both (`_from_stable_diffusion`).
"""

import json
import os
import shutil

import jax
import numpy as np

from diffax.interop import diffusers_unet
from diffax.interop import diffusers_vae
from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import clip_tokenizer
from diffax.pipeline import latent as latent_lib
from diffax.pipeline import optim
from diffax.pipeline import sample as sample_lib
from diffax.pipeline import state as state_lib
from diffax.pipeline import text as text_lib
from diffax.pipeline.workdir import Workdir

WEIGHTS = "diffusion_pytorch_model.safetensors"

# diffusers scheduler -> diffax settings.
_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
              "squaredcos_cap_v2": "cosine"}
_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_SAMPLERS = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim",
             "DPMSolverMultistepScheduler": "dpmpp_2m", "HeunDiscreteScheduler": "heun",
             "EulerAncestralDiscreteScheduler": "euler_ancestral"}
_SPACINGS = {"leading": "leading", "trailing": "trailing", "linspace": "linspace"}


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _locate(source: str) -> tuple[str, str]:
  """The model directory and the scheduler config file of a diffusers directory."""
  if not os.path.isdir(source):
    raise FileNotFoundError(f"--from_diffusers={source} is not a directory: give a local "
                            f"diffusers model or pipeline directory")
  if os.path.exists(os.path.join(source, "model_index.json")):
    index = _read_json(os.path.join(source, "model_index.json"))
    if "unet" not in index:
      raise ValueError(f"{source}/model_index.json names no unet (components: "
                       f"{sorted(k for k in index if not k.startswith('_'))})")
    model_dir = os.path.join(source, "unet")
  else:
    model_dir = source
  candidates = [os.path.join(model_dir, "scheduler_config.json"),
                os.path.join(os.path.dirname(os.path.abspath(model_dir)), "scheduler",
                             "scheduler_config.json")]
  scheduler = next((c for c in candidates if os.path.exists(c)), None)
  if scheduler is None:
    raise FileNotFoundError(f"no scheduler config for {model_dir}: expected {candidates[1]} "
                            f"(a pipeline's scheduler/) or {candidates[0]}")
  return model_dir, scheduler


def _load_weights(model_dir: str) -> dict:
  path = os.path.join(model_dir, WEIGHTS)
  if not os.path.exists(path):
    others = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".ckpt", ".pt"))]
    hint = (f"; found {others}: convert it to safetensors (diffusers: "
            f"model.save_pretrained(dir, safe_serialization=True))" if others else "")
    raise FileNotFoundError(f"{path} not found{hint}")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(path)


def _diffusion_settings(scheduler: dict, config) -> None:
  """Fills config.diffusion and config.sample from a diffusers scheduler config."""
  name = scheduler.get("beta_schedule", "linear")
  if name not in _SCHEDULES or scheduler.get("trained_betas"):
    raise ValueError(f"scheduler beta_schedule={name!r} is not supported; diffax maps "
                     f"{sorted(_SCHEDULES)}")
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in _PREDICTIONS:
    raise ValueError(f"scheduler prediction_type={prediction!r} is not supported; diffax maps "
                     f"{sorted(_PREDICTIONS)}")
  variance = scheduler.get("variance_type", "fixed_small")
  if variance not in ("fixed_small", None):
    raise ValueError(f"scheduler variance_type={variance!r} (a learned variance) is not "
                     f"supported; diffax samples with the posterior variance (fixed_small)")
  d, s = config.diffusion, config.sample
  d.schedule = _SCHEDULES[name]
  d.num_steps = int(scheduler.get("num_train_timesteps", 1000))
  d.beta_start = float(scheduler.get("beta_start", d.beta_start))
  d.beta_end = float(scheduler.get("beta_end", d.beta_end))
  d.prediction = _PREDICTIONS[prediction]
  s.sampler = _SAMPLERS.get(scheduler.get("_class_name"), "ddim")
  s.num_steps = d.num_steps if s.sampler == "ddpm" else min(50, d.num_steps)
  s.spacing = _SPACINGS.get(scheduler.get("timestep_spacing", "linspace"), "linspace")
  s.clip_x0 = bool(scheduler.get("clip_sample", False))
  s.threshold = (float(scheduler.get("dynamic_thresholding_ratio", 0.995))
                 if scheduler.get("thresholding") else 0.0)


def _save_as_run(workdir: Workdir, config, params, init_fn=None) -> None:
  """Writes config.json and checkpoint 0 (params = EMA params = `params`), checked against
  the parameters `init_fn` (default: the config's diffusion model's) would create."""
  init_fn = init_fn or build.model(config).init_fn
  tx, _ = optim.create_optimizer(config)
  state = state_lib.create_train_state(lambda rng: jax.tree.map(np.asarray, params), tx,
                                       jax.random.key(0))
  expected = jax.tree.map(lambda x: x.shape, jax.eval_shape(init_fn, jax.random.key(0)))
  if jax.tree.map(np.shape, state.params) != expected:
    raise ValueError("the converted weights do not fit the network the config describes")
  workdir.save_config(config)
  with checkpoint.from_config(config, workdir) as ckpt:
    ckpt.save(0, state, force=True)


def from_diffusers(source: str, workdir: Workdir, defaults, autoencoder_defaults=None, *,
                   dataset: str = ""):
  """Converts a local diffusers directory into a workdir: a UNet2DModel (model or pipeline
  directory), or a Stable Diffusion pipeline (`_from_stable_diffusion`).

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
  model_dir, scheduler_path = _locate(source)
  unet_config = _read_json(os.path.join(model_dir, "config.json"))
  kind = unet_config.get("_class_name", "UNet2DModel")
  if kind == diffusers_unet.CONDITION_MODEL:
    defaults.data.dataset = dataset
    return _from_stable_diffusion(source, workdir, defaults, autoencoder_defaults,
                                  _read_json(scheduler_path))
  if kind != "UNet2DModel":
    raise ValueError(f"{model_dir} holds a {kind}; diffax converts UNet2DModel (DDPM) and "
                     f"UNet2DConditionModel (Stable Diffusion) U-Nets")
  arch = diffusers_unet.unet_config(unet_config)
  params = diffusers_unet.convert_unet2d(_load_weights(model_dir), arch)
  config = defaults
  height, width, channels = arch.pop("sample_shape")
  if height != width:
    raise ValueError(f"sample_size {height}x{width}: diffax's image configs are square")
  config.data.dataset = dataset
  config.data.image_size, config.data.channels = height, channels
  for key, value in arch.items():
    config.model[key] = value
  _diffusion_settings(_read_json(scheduler_path), config)
  _save_as_run(workdir, config, params)
  return config


def _component(source: str, name: str, weights: str, *, load: bool = True) -> tuple[dict, dict]:
  """The config.json and safetensors weights (None without `load`: checked to exist) of a
  pipeline's component directory."""
  directory = os.path.join(source, name)
  for path in (os.path.join(directory, "config.json"), os.path.join(directory, weights)):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: a Stable Diffusion pipeline directory has "
                              f"unet/, vae/, text_encoder/, tokenizer/ and scheduler/")
  config = _read_json(os.path.join(directory, "config.json"))
  if not load:
    return config, None
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return config, load_file(os.path.join(directory, weights))


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


def _from_stable_diffusion(source: str, workdir: Workdir, defaults, autoencoder_defaults,
                           scheduler: dict):
  """A Stable Diffusion pipeline directory as two diffax stages and a text encoder:

    WORKDIR/autoencoder/    the VAE, a `task = "autoencoder"` run
    WORKDIR/text_encoder/   the CLIP text encoder with its tokenizer (`diffax.pipeline.text`)
    WORKDIR/                the U-Net, a latent text-conditional diffusion run naming both,
                            with SD's latent scale, text conditioning (`text.attend_padding`)
                            and guidance scale 7.5
  """
  if not os.path.exists(os.path.join(source, "model_index.json")):
    raise ValueError(f"{source} holds a UNet2DConditionModel alone; convert its Stable "
                     f"Diffusion pipeline directory (model_index.json, unet/, vae/, "
                     f"text_encoder/, tokenizer/, scheduler/)")
  unet_config, unet_weights = _component(source, "unet", WEIGHTS)
  vae_config, vae_weights = _component(source, "vae", WEIGHTS)
  text_config, _ = _component(source, "text_encoder", text_lib.WEIGHTS, load=False)
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
  _save_as_run(ae_workdir, ae, {"autoencoder": ae_params},
               lambda rng: {"autoencoder": build.autoencoder(ae).init_fn(rng)})

  max_length = int(text_config.get("max_position_embeddings", 77))
  text_dir = os.path.join(os.path.abspath(workdir.path), "text_encoder")
  _text_encoder_dir(source, text_dir)

  config = defaults
  config.data.image_size, config.data.channels = image_size, channels
  for key, value in arch.items():
    config.model[key] = value
  config.latent.autoencoder_workdir = os.path.abspath(ae_workdir.path)
  config.latent.autoencoder_step = 0
  config.latent.scale_factor = diffusers_vae.latent_scale_factor(vae_config)
  config.text.encoder, config.text.max_length = text_dir, max_length
  config.text.attend_padding = True
  config.sample.guidance_scale = 7.5
  config.train.cond_dropout = 0.1  # SD drops 10 % of captions: its unconditional model is trained
  _diffusion_settings(scheduler, config)
  _save_as_run(workdir, config, params, build.model(config, shape=(size, size,
                                                                  latent_channels)).init_fn)
  return config


def to_diffusers(workdir: Workdir, out: str, defaults) -> str:
  """Writes a diffax run's EMA params as a diffusers DDPMPipeline directory (`unet/`,
  `scheduler/`, `model_index.json`), loadable with `DDPMPipeline.from_pretrained(out)`.

  Returns:
    `out`.

  Raises:
    ValueError: a network or schedule diffusers' UNet2DModel / DDPMScheduler cannot express.
  """
  config = workdir.load_config(defaults=defaults)
  if config.model.get("context_dim") or latent_lib.enabled(config):
    raise ValueError(f"--workdir={workdir} is a text-conditional or latent run; --to_diffusers "
                     f"writes the DDPMPipeline of a pixel-space unconditional or class model "
                     f"(its U-Net alone converts with diffax.interop.unet_to_diffusers)")
  net = build.model(config)
  params, _ = sample_lib.load_ema_params(workdir, config, net)
  arch = {k: v for k, v in config.model.items() if k not in ("name", "dtype", "fast_layers")}
  arch["sample_shape"] = net.sample_shape
  unet_config, state_dict = diffusers_unet.unet_to_diffusers(arch, jax.device_get(params))
  schedules = {v: k for k, v in _SCHEDULES.items()}
  predictions = {v: k for k, v in _PREDICTIONS.items()}
  scheduler = {
      "_class_name": "DDPMScheduler", "num_train_timesteps": config.diffusion.num_steps,
      "beta_schedule": schedules[config.diffusion.schedule],
      "beta_start": config.diffusion.beta_start, "beta_end": config.diffusion.beta_end,
      "prediction_type": predictions[config.diffusion.prediction],
      "clip_sample": bool(config.sample.clip_x0), "variance_type": "fixed_small",
      "timestep_spacing": "leading"}
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.join(out, "unet"), exist_ok=True)
  os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
  with open(os.path.join(out, "unet", "config.json"), "w", encoding="utf-8") as f:
    json.dump(dict(unet_config, _class_name="UNet2DModel"), f, indent=2)
  save_file(state_dict, os.path.join(out, "unet", WEIGHTS))
  with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w",
            encoding="utf-8") as f:
    json.dump(scheduler, f, indent=2)
  with open(os.path.join(out, "model_index.json"), "w", encoding="utf-8") as f:
    json.dump({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
               "scheduler": ["diffusers", "DDPMScheduler"]}, f, indent=2)
  return out
