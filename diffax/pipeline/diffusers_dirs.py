"""Reading and writing diffusers directories, and saving converted weights as a diffax run.

Shared by the converters (`convert`: DDPM U-Nets; `stable_diffusion`): a directory's JSON
configs and safetensors weights (read into numpy, no torch), the scheduler config <-> diffax's
`config.diffusion` and `config.sample`, and a converted model written as checkpoint 0 of a
workdir (params = EMA params), which every diffax script then reads like a trained run.
"""

import json
import os

import jax
import numpy as np

from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import optim
from diffax.pipeline import state as state_lib
from diffax.pipeline.workdir import Workdir

WEIGHTS = "diffusion_pytorch_model.safetensors"

# diffusers scheduler -> diffax settings.
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
              "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SAMPLERS = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim",
             "DPMSolverMultistepScheduler": "dpmpp_2m", "HeunDiscreteScheduler": "heun",
             "EulerAncestralDiscreteScheduler": "euler_ancestral"}
SPACINGS = {"leading": "leading", "trailing": "trailing", "linspace": "linspace"}


def read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json(path: str, value: dict) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2)


def save_model(directory: str, config: dict, state_dict: dict,
               weights: str = "diffusion_pytorch_model.safetensors") -> None:
  """Writes a diffusers (or transformers) model directory: config.json and the weights."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  write_json(os.path.join(directory, "config.json"), config)
  save_file(state_dict, os.path.join(directory, weights))


def scheduler_config(config, class_name: str, **extra) -> dict:
  """The diffusers scheduler config of a run's `config.diffusion` (`diffusion_settings`'s
  inverse)."""
  schedules = {v: k for k, v in SCHEDULES.items()}
  predictions = {v: k for k, v in PREDICTIONS.items()}
  d = config.diffusion
  return {"_class_name": class_name, "num_train_timesteps": d.num_steps,
          "beta_schedule": schedules[d.schedule], "beta_start": d.beta_start,
          "beta_end": d.beta_end, "prediction_type": predictions[d.prediction],
          "clip_sample": bool(config.sample.clip_x0), **extra}


def locate(source: str) -> tuple[str, str]:
  """The model directory and the scheduler config file of a diffusers directory."""
  if not os.path.isdir(source):
    raise FileNotFoundError(f"--from_diffusers={source} is not a directory: give a local "
                            f"diffusers model or pipeline directory")
  if os.path.exists(os.path.join(source, "model_index.json")):
    index = read_json(os.path.join(source, "model_index.json"))
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


def load_weights(model_dir: str) -> dict:
  path = os.path.join(model_dir, WEIGHTS)
  if not os.path.exists(path):
    others = [f for f in os.listdir(model_dir) if f.endswith((".bin", ".ckpt", ".pt"))]
    hint = (f"; found {others}: convert it to safetensors (diffusers: "
            f"model.save_pretrained(dir, safe_serialization=True))" if others else "")
    raise FileNotFoundError(f"{path} not found{hint}")
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return load_file(path)


def diffusion_settings(scheduler: dict, config) -> None:
  """Fills config.diffusion and config.sample from a diffusers scheduler config."""
  name = scheduler.get("beta_schedule", "linear")
  if name not in SCHEDULES or scheduler.get("trained_betas"):
    raise ValueError(f"scheduler beta_schedule={name!r} is not supported; diffax maps "
                     f"{sorted(SCHEDULES)}")
  prediction = scheduler.get("prediction_type", "epsilon")
  if prediction not in PREDICTIONS:
    raise ValueError(f"scheduler prediction_type={prediction!r} is not supported; diffax maps "
                     f"{sorted(PREDICTIONS)}")
  variance = scheduler.get("variance_type", "fixed_small")
  if variance not in ("fixed_small", None):
    raise ValueError(f"scheduler variance_type={variance!r} (a learned variance) is not "
                     f"supported; diffax samples with the posterior variance (fixed_small)")
  d, s = config.diffusion, config.sample
  d.schedule = SCHEDULES[name]
  d.num_steps = int(scheduler.get("num_train_timesteps", 1000))
  d.beta_start = float(scheduler.get("beta_start", d.beta_start))
  d.beta_end = float(scheduler.get("beta_end", d.beta_end))
  d.prediction = PREDICTIONS[prediction]
  s.sampler = SAMPLERS.get(scheduler.get("_class_name"), "ddim")
  s.num_steps = d.num_steps if s.sampler == "ddpm" else min(50, d.num_steps)
  s.spacing = SPACINGS.get(scheduler.get("timestep_spacing", "linspace"), "linspace")
  s.clip_x0 = bool(scheduler.get("clip_sample", False))
  s.threshold = (float(scheduler.get("dynamic_thresholding_ratio", 0.995))
                 if scheduler.get("thresholding") else 0.0)


def save_as_run(workdir: Workdir, config, params, init_fn=None) -> None:
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


def component(source: str, name: str, weights: str, *, load: bool = True) -> tuple[dict, dict]:
  """The config.json and safetensors weights (None without `load`: checked to exist) of a
  pipeline's component directory."""
  directory = os.path.join(source, name)
  for path in (os.path.join(directory, "config.json"), os.path.join(directory, weights)):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: a Stable Diffusion pipeline directory has "
                              f"unet/, vae/, text_encoder/, tokenizer/ and scheduler/")
  config = read_json(os.path.join(directory, "config.json"))
  if not load:
    return config, None
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  return config, load_file(os.path.join(directory, weights))


