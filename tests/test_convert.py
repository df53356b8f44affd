"""Pretrained weights in and out through scripts/convert.py: a diffusers DDPMPipeline directory
becomes a diffax workdir that scripts/sample.py samples, computing what diffusers computes with
the same weights; and a diffax run goes back out as a directory diffusers loads, exactly."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffusers
from configs import common
from diffax import interop
from diffax import models
from diffax.pipeline import build
from diffax.pipeline import convert
from diffax.pipeline import sample
from diffax.pipeline.workdir import Workdir
from conftest import run_script

UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
            layers_per_block=1, norm_num_groups=4, norm_eps=1e-6,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), flip_sin_to_cos=False, freq_shift=1)


def randomized(model, seed=0):
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((1.0 if "norm" in name and name.endswith("weight") else 0.0)
              + 0.15 * torch.randn_like(p))
  return model.eval()


def outputs(apply_fn, params, torch_model):
  x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
  t = np.array([3, 71])
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
  got = jax.jit(apply_fn)(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t))
  return np.asarray(got), want.transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """A random DDPMPipeline saved by diffusers (cosine schedule, v prediction) and its
  conversion by scripts/convert.py."""
  root = tmp_path_factory.mktemp("convert")
  unet = randomized(diffusers.UNet2DModel(**UNET))
  scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                      prediction_type="v_prediction", clip_sample=True)
  diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(root / "pipe")
  workdir = root / "run"
  result = run_script("convert", f"--from_diffusers={root / 'pipe'}", f"--workdir={workdir}",
                      "--dataset=digits")
  assert result.returncode == 0, result.stderr[-3000:]
  return unet, root, Workdir(workdir)


def test_a_converted_pipeline_computes_what_diffusers_computes(converted):
  unet, _, workdir = converted
  config = workdir.load_config(defaults=common.base_config())
  assert (config.diffusion.schedule, config.diffusion.num_steps, config.diffusion.prediction,
          config.sample.sampler, config.sample.clip_x0) == ("cosine", 100, "v", "ddim", True)
  net = build.model(config)
  params, step = sample.load_ema_params(workdir, config, net)
  assert step == 0
  got, want = outputs(net.apply_fn, params, unet)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_sample_script_draws_from_a_converted_run(converted, tmp_path):
  _, _, workdir = converted
  result = run_script("sample", f"--workdir={workdir}", "--num_samples=4",
                      "--sampler=dpmpp_2m", "--num_steps=5", f"--out={tmp_path / 's.png'}")
  assert result.returncode == 0, result.stderr[-3000:]
  samples = np.load(tmp_path / "s.npz")["samples"]
  assert samples.shape == (4, 8, 8, 1) and np.all(np.isfinite(samples))


def test_evaluate_script_scores_a_converted_run(converted, classifier_run):
  """--dataset names the data the model was trained on: evaluation compares with it."""
  _, _, workdir = converted
  result = run_script("evaluate", f"--workdir={workdir}", "--samplers=ddim:linspace",
                      "--steps=3", "--num_samples=30", "--batch_size=30", "--ideal=false",
                      f"--classifier_workdir={classifier_run}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "ddim" in result.stdout and os.path.exists(os.path.join(workdir.path, "eval",
                                                                 "sweep.jsonl"))


def test_weights_out_load_in_diffusers_and_come_back_exactly(converted, tmp_path):
  unet, _, workdir = converted
  out = tmp_path / "exported"
  result = run_script("convert", f"--workdir={workdir}", f"--to_diffusers={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  pipe = diffusers.DDPMPipeline.from_pretrained(out)
  assert pipe.scheduler.config.beta_schedule == "squaredcos_cap_v2"
  for ours, theirs in zip(pipe.unet.state_dict().values(), unet.state_dict().values()):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())  # diffax -> diffusers exact
  state_dict = {k: v.numpy() for k, v in pipe.unet.state_dict().items()}
  apply_fn, params = interop.unet_from_diffusers(dict(pipe.unet.config), state_dict)
  config = workdir.load_config(defaults=common.base_config())
  original, _ = sample.load_ema_params(workdir, config, build.model(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(original), params)  # and back


def test_a_diffax_unet_goes_out_with_the_same_outputs():
  arch = dict(sample_shape=(8, 8, 3), base_channels=16, channel_mult=(1, 2, 2),
              num_res_blocks=1, attention_resolutions=(4,), num_heads=2, dropout=0.0,
              num_groups=4, num_classes=3, scale_shift=False)
  model = models.create("unet", **arch)
  shapes = jax.eval_shape(model.init_fn, jax.random.key(0))
  rng = np.random.default_rng(3)
  params = jax.tree.map(lambda s: 0.2 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  config, state_dict = interop.unet_to_diffusers(arch, params)
  theirs = diffusers.UNet2DModel(**config).eval()
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
  x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
  t, labels = np.array([5, 600]), np.array([0, 2])
  with torch.no_grad():
    want = theirs(torch.from_numpy(x), torch.from_numpy(t),
                  class_labels=torch.from_numpy(labels)).sample.numpy().transpose(0, 2, 3, 1)
  got = jax.jit(model.apply_fn)(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t),
                                {"label": jnp.asarray(labels)})
  assert np.abs(np.asarray(got) - want).max() <= 1e-4 * np.abs(want).max()
  with pytest.raises(ValueError, match="scale_shift"):
    interop.unet_to_diffusers(dict(arch, scale_shift=True), params)


@pytest.mark.parametrize("breakage, expected", [
    ("no_scheduler", "no scheduler config"),
    ("bin_weights", "convert it to safetensors"),
    ("learned_variance", "variance_type='learned_range'"),
    ("conditional", "a Stable Diffusion pipeline directory has unet/, vae/"),
])
def test_bad_sources_fail_early_naming_the_problem(converted, tmp_path, breakage, expected):
  _, root, _ = converted
  import shutil  # pylint: disable=g-import-not-at-top
  source = tmp_path / "pipe"
  shutil.copytree(root / "pipe", source)
  if breakage == "no_scheduler":
    shutil.rmtree(source / "scheduler")
  elif breakage == "bin_weights":
    os.rename(source / "unet" / "diffusion_pytorch_model.safetensors",
              source / "unet" / "diffusion_pytorch_model.bin")
  else:
    path = source / ("scheduler/scheduler_config.json" if breakage == "learned_variance"
                     else "unet/config.json")
    data = json.loads(path.read_text())
    if breakage == "learned_variance":
      data["variance_type"] = "learned_range"
    else:
      data["_class_name"] = "UNet2DConditionModel"
    path.write_text(json.dumps(data))
  with pytest.raises((ValueError, FileNotFoundError), match=re.escape(expected)):
    convert.from_diffusers(str(source), Workdir(tmp_path / "w"), common.base_config())
  assert not (tmp_path / "w").exists()  # nothing written
