"""Pretrained weights in and out: a local diffusers directory <-> a diffax workdir.

  from_diffusers(source, workdir, defaults)   # scripts/convert.py --from_diffusers=DIR
  to_diffusers(workdir, out, defaults)        # scripts/convert.py --to_diffusers=DIR

A converted workdir is like a trained run: its config.json describes the network, schedule and
sampler defaults (taken from the scheduler config), and checkpoint 0 holds the weights as both
params and EMA params, so `scripts/sample.py --workdir=...` samples it with any diffax sampler.
Nothing is downloaded: the source is a directory on disk, either a model directory
(`config.json` + `diffusion_pytorch_model.safetensors`, and a `scheduler_config.json` beside it
or in `../scheduler/`) or a pipeline directory (`model_index.json`, `unet/`, `scheduler/`).
"""

import json
import os

import jax
import numpy as np

from diffax.interop import diffusers_unet
from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import optim
from diffax.pipeline import sample as sample_lib
from diffax.pipeline import state as state_lib
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


def _save_as_run(workdir: Workdir, config, params) -> None:
  """Writes config.json and checkpoint 0 (params = EMA params = `params`)."""
  net = build.model(config)
  tx, _ = optim.create_optimizer(config)
  state = state_lib.create_train_state(lambda rng: jax.tree.map(np.asarray, params), tx,
                                       jax.random.key(0))
  expected = jax.tree.map(lambda x: x.shape, jax.eval_shape(net.init_fn, jax.random.key(0)))
  if jax.tree.map(np.shape, state.params) != expected:
    raise ValueError("the converted weights do not fit the network the config describes")
  workdir.save_config(config)
  with checkpoint.from_config(config, workdir) as ckpt:
    ckpt.save(0, state, force=True)


def from_diffusers(source: str, workdir: Workdir, defaults):
  """Converts a local diffusers UNet2DModel (model or pipeline directory) into a workdir.

  Args:
    source: the diffusers directory.
    workdir: where the diffax run is written (must not hold a run yet).
    defaults: the base config (configs/common.py's `base_config()`) to fill in.

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
  if kind != "UNet2DModel":
    raise ValueError(f"{model_dir} holds a {kind}; diffax converts UNet2DModel (the DDPM "
                     f"checkpoints) so far")
  arch = diffusers_unet.unet_config(unet_config)
  params = diffusers_unet.convert_unet2d(_load_weights(model_dir), arch)
  config = defaults
  height, width, channels = arch.pop("sample_shape")
  if height != width:
    raise ValueError(f"sample_size {height}x{width}: diffax's image configs are square")
  config.data.dataset = ""  # a converted model names no training data
  config.data.image_size, config.data.channels = height, channels
  for key, value in arch.items():
    config.model[key] = value
  _diffusion_settings(_read_json(scheduler_path), config)
  _save_as_run(workdir, config, params)
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
