"""A Stable Diffusion pipeline directory through scripts/convert.py and scripts/sample.py.

A tiny random StableDiffusionPipeline (UNet2DConditionModel, AutoencoderKL, CLIPTextModel and
CLIP's tokenizer as vocab.json + merges.txt) is saved by diffusers, converted into diffax's
stages, and sampled with DDIM and guidance 7.5 from the x_T diffax draws: the latents and the
decoded images equal what diffusers' own pipeline draws from the same x_T. That checks every
piece at once: the tokenizer, SD's padding and empty-prompt null condition, the text encoder,
the U-Net, the guidance formula, the scheduler settings, the latent scale and the VAE decoder.
"""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

import diffusers
from configs import common
from diffax.pipeline import build
from diffax.pipeline import sample
from diffax.pipeline.workdir import Workdir
from diffax.sampling import loop
from conftest import run_script
from test_convert import randomized
from test_interop_clip_text import random_clip
from test_interop_clip_text import write_vocab

UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
            layers_per_block=1, norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
VAE = dict(in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
           latent_channels=4, norm_num_groups=4, sample_size=16)
PROMPTS = ("a photo of a cat", "hello world")


@pytest.fixture(scope="module")
def stable_diffusion(tmp_path_factory):
  """A random StableDiffusionPipeline saved by diffusers, and its conversion."""
  root = tmp_path_factory.mktemp("sd")
  vocab = write_vocab(str(root / "vocab"))
  tokenizer = transformers.CLIPTokenizer.from_pretrained(str(root / "vocab"),
                                                         model_max_length=16)
  text_encoder, _ = random_clip(len(vocab), vocab["<|endoftext|>"], "quick_gelu", seed=3)
  scheduler = diffusers.DDIMScheduler(
      num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
      beta_end=0.012, clip_sample=False, set_alpha_to_one=True, steps_offset=0,
      timestep_spacing="leading")
  pipe = diffusers.StableDiffusionPipeline(
      vae=randomized(diffusers.AutoencoderKL(**VAE), 1),
      text_encoder=text_encoder, tokenizer=tokenizer,
      unet=randomized(diffusers.UNet2DConditionModel(**UNET), 2), scheduler=scheduler,
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe.save_pretrained(root / "pipe", safe_serialization=True)
  result = run_script("convert", f"--from_diffusers={root / 'pipe'}", f"--workdir={root / 'run'}",
                      devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  return pipe, root


def test_the_conversion_writes_the_stages_of_latent_diffusion(stable_diffusion):
  _, root = stable_diffusion
  config = Workdir(str(root / "run")).load_config(defaults=common.base_config())
  assert config.latent.autoencoder_workdir == str(root / "run" / "autoencoder")
  assert (config.latent.scale_factor, config.latent.autoencoder_step) == (0.18215, 0)
  assert (config.text.max_length, config.text.attend_padding) == (16, True)
  assert (config.data.image_size, config.data.channels) == (16, 3)
  assert (config.model.context_dim, config.model.time_embedding, config.model.mid_attention,
          config.model.norm_eps) == (32, "adm", False, 1e-5)
  assert (config.diffusion.schedule, config.sample.sampler, config.sample.guidance_scale) == (
      "scaled_linear", "ddim", 7.5)
  ae_config = Workdir(config.latent.autoencoder_workdir).load_config()
  assert (ae_config.task, ae_config.model.downsample_padding) == ("autoencoder", "asymmetric")
  # The null condition of guidance is SD's: the encoded empty prompt, every position real.
  null = build.model(config, shape=(8, 8, 4)).null_cond
  assert null["context"].shape == (16, 32) and null["context_mask"].all()
  assert np.abs(null["context"]).max() > 0.1


def test_converted_stable_diffusion_draws_what_diffusers_draws(stable_diffusion, tmp_path):
  pipe, root = stable_diffusion
  result = run_script("sample", f"--workdir={root / 'run'}", *(f"--prompt={p}" for p in PROMPTS),
                      "--num_samples=2", "--sampler=ddim", "--num_steps=4", "--spacing=leading",
                      "--eta=0", "--save_latents", f"--out={tmp_path / 's.png'}", devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  drawn = np.load(tmp_path / "s.npz")
  x_t = np.asarray(loop.initial_noise(jax.random.key(0), (2, 8, 8, 4), np.arange(2)))
  # StableDiffusionPipeline forces steps_offset=1 ("leading" timesteps 751, 501, ...); diffax's
  # leading spacing has none (750, 500, ...), so the reference runs its scheduler without it.
  pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0)
  with torch.no_grad():
    latents = pipe(list(PROMPTS), num_inference_steps=4, guidance_scale=7.5,
                   latents=torch.from_numpy(x_t.transpose(0, 3, 1, 2).copy()),
                   output_type="latent").images
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
  want_latents = latents.numpy().transpose(0, 2, 3, 1)
  want_images = np.clip(images.numpy().transpose(0, 2, 3, 1), -1, 1)
  rel = lambda a, b: np.abs(a - b).max() / np.abs(b).max()
  assert np.abs(want_latents - x_t).max() > 0.1  # the model did move the latents
  assert rel(drawn["latents"], want_latents) < 1e-4, rel(drawn["latents"], want_latents)
  assert rel(np.clip(drawn["samples"], -1, 1), want_images) < 1e-4
  assert os.path.exists(tmp_path / "s.png")


def test_sampling_a_converted_run_reads_its_checkpoint_once(stable_diffusion):
  """The U-Net's checkpoint holds exactly the diffusers weights (params = EMA params)."""
  pipe, root = stable_diffusion
  workdir = Workdir(str(root / "run"))
  config = workdir.load_config(defaults=common.base_config())
  net = build.model(config, shape=(8, 8, 4))
  params, step = sample.load_ema_params(workdir, config, net)
  assert step == 0
  kernel = np.asarray(params["conv_in"]["kernel"])
  want = pipe.unet.conv_in.weight.detach().numpy().transpose(2, 3, 1, 0)
  np.testing.assert_array_equal(kernel, want)


@pytest.mark.parametrize("breakage, expected", [
    ("unet_only", "holds a UNet2DConditionModel alone"),
    ("no_vae_weights", "vae/diffusion_pytorch_model.safetensors not found"),
    ("no_tokenizer", "has neither vocab.json + merges.txt nor tokenizer.json"),
])
def test_bad_stable_diffusion_sources_are_named(stable_diffusion, tmp_path, breakage, expected):
  import shutil  # pylint: disable=g-import-not-at-top
  _, root = stable_diffusion
  source = tmp_path / "pipe"
  shutil.copytree(root / "pipe", source)
  if breakage == "unet_only":
    source = source / "unet"
    with open(source / "scheduler_config.json", "w", encoding="utf-8") as f:
      json.dump({"_class_name": "DDIMScheduler"}, f)
  elif breakage == "no_vae_weights":
    os.remove(source / "vae" / "diffusion_pytorch_model.safetensors")
  else:
    shutil.rmtree(source / "tokenizer")
    os.makedirs(source / "tokenizer")
  result = run_script("convert", f"--from_diffusers={source}", f"--workdir={tmp_path / 'run'}",
                      devices=1)
  assert result.returncode != 0
  assert expected in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]


def test_a_converted_run_goes_back_out_as_a_stable_diffusion_pipeline(stable_diffusion, tmp_path):
  """diffusers -> diffax -> diffusers is exact: every weight, the tokenizer and the schedule."""
  pipe, root = stable_diffusion
  out = tmp_path / "exported"
  result = run_script("convert", f"--workdir={root / 'run'}", f"--to_diffusers={out}", devices=1)
  assert result.returncode == 0, result.stderr[-3000:]
  again = diffusers.StableDiffusionPipeline.from_pretrained(out)
  for name in ("unet", "vae", "text_encoder"):
    ours, theirs = getattr(again, name).state_dict(), getattr(pipe, name).state_dict()
    assert ours.keys() == theirs.keys(), name
    for key in theirs:  # SD 1's 1x1-conv projections come back as the same Linear matrices
      np.testing.assert_array_equal(ours[key].numpy().reshape(theirs[key].shape),
                                    theirs[key].numpy(), err_msg=key)
  assert again.vae.config.scaling_factor == pipe.vae.config.scaling_factor
  for prompt in PROMPTS + ("",):
    assert (again.tokenizer(prompt, padding="max_length", max_length=16).input_ids
            == pipe.tokenizer(prompt, padding="max_length", max_length=16).input_ids)
  for key in ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps",
              "prediction_type", "clip_sample"):
    assert again.scheduler.config[key] == pipe.scheduler.config[key], key
