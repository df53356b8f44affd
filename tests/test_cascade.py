"""The cascade (Imagen, SR3) on real models: configs/digits_sr.py (4x4 -> 8x8 with
noise-conditioning augmentation) and the 4x4 text base configs/digits_text.py:base4, each
trained through scripts/train.py (conftest's `digits_sr_run`, `digits_text4_run`), judged on
the held-out digits and by the logistic regression on the embedded digits.
"""

import jax
import numpy as np
from PIL import Image
import pytest

from configs import common
from configs import digits_sr
from configs import digits_text
from diffax.models import low_res as low_res_lib
from diffax.pipeline import build
from diffax.pipeline import cascade
from diffax.pipeline import conditions
from diffax.pipeline import sample
from diffax.pipeline.datasets import digits as digits_dataset
from diffax.pipeline.workdir import Workdir
from conftest import REPO, embedded_digits, run_sample_main


def psnr(a, b):
  """Mean PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
  mse = np.mean((np.asarray(a) - np.asarray(b)) ** 2, axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(4.0 / mse)))


def test_super_resolution_matches_its_input_and_beats_bicubic(digits_sr_run):
  config = Workdir(digits_sr_run).load_config(defaults=common.base_config())
  net, schedule = build.model(config), build.schedule(config)
  params, step = sample.load_ema_params(Workdir(digits_sr_run), config, net)
  assert step == 600 and config.sample.noise_level == 0.0
  images, _ = embedded_digits()
  truth = images[digits_dataset.NUM_TRAIN:][:100]  # held out of training
  low = conditions.downsample(truth, 2)  # [100, 4, 4, 1]
  req = sample.request(config, net, schedule, num_images=100, batch_size=100, low_res=low,
                       low_res_rng=jax.random.key(5))
  x = req(params, jax.random.key(3))
  bicubic = np.clip(np.asarray(low_res_lib.upsample(low, (8, 8))), -1, 1)
  rmse = lambda a, b: float(np.sqrt(np.mean((a - b) ** 2)))
  consistency = rmse(conditions.downsample(x, 2), low)
  scores = {"sr_psnr": psnr(x, truth), "bicubic_psnr": psnr(bicubic, truth),
            "downsampled_rmse": consistency, "other_digit_rmse": rmse(np.roll(low, 1, 0), low)}
  print("super-resolution of held-out digits:", scores)  # measured: see the README
  # Its output, downsampled, is its input (range [-1, 1]; another digit is ~0.6 away).
  assert consistency < 0.15 and consistency < 0.25 * scores["other_digit_rmse"], scores
  assert scores["sr_psnr"] > scores["bicubic_psnr"] + 0.5, scores


def test_cascade_from_workdirs_draws_the_prompted_digits(digits_text4_run, digits_sr_run,
                                                         tmp_path, digit_classifier):
  out = tmp_path / "cascade.png"
  prompts = ["a drawing of the digit three", "someone wrote a 7", "a hand-drawn zero"]
  run_sample_main(f"--workdir={digits_text4_run},{digits_sr_run}", f"--out={out}",
                  *[f"--prompt={p}" for p in prompts], "--num_samples=30", "--num_steps=20",
                  "--guidance_scale=3", "--threshold=0.995")
  npz = np.load(tmp_path / "cascade.npz")
  base, final = npz["stage_0"], npz["stage_1"]
  assert base.shape == (30, 4, 4, 1) and final.shape == (30, 8, 8, 1)
  np.testing.assert_array_equal(npz["samples"], final)
  want = np.array([3, 7, 0] * 10)
  accuracy = float(np.mean(digit_classifier.predict(final.reshape(30, -1)) == want))
  print("cascade prompt accuracy:", accuracy)
  assert accuracy > 0.5, accuracy
  # Each SR image, downsampled, is its base image (noised to 0.1 only at the input).
  assert float(np.sqrt(np.mean((conditions.downsample(final, 2) - base) ** 2))) < 0.15
  stages = np.asarray(Image.open(tmp_path / "cascade_stages.png"))
  grid = np.asarray(Image.open(out))
  assert stages.shape[0] == grid.shape[0] and stages.shape[1] > grid.shape[1]


def test_cascade_from_a_config_with_per_stage_settings(digits_text4_run, digits_sr_run,
                                                       tmp_path):
  out = tmp_path / "from_config.png"
  run_sample_main(f"--cascade={REPO}/configs/cascade_digits.py",
                  f"--cascade.base.workdir={digits_text4_run}",
                  f"--cascade.sr.workdir={digits_sr_run}", "--cascade.num_images=6",
                  "--cascade.sr.sample.noise_level=0.2", "--cascade.base.sample.num_steps=10",
                  "--cascade.sr.sample.num_steps=10", f"--out={out}")
  npz = np.load(tmp_path / "from_config.npz")
  assert npz["stage_0"].shape == (6, 4, 4, 1) and npz["samples"].shape == (6, 8, 8, 1)
  # The same image of stage 0 as a one-stage sample.py run with the same settings and seed.
  single = tmp_path / "base.png"
  run_sample_main(f"--workdir={digits_text4_run}", f"--out={single}", "--num_samples=6",
                  "--num_steps=10", "--threshold=0.995", "--guidance_scale=3",
                  "--sampler=dpmpp_2m", "--spacing=karras",
                  *[f"--prompt={p}" for p in digits_text.PROMPTS])
  np.testing.assert_allclose(np.load(tmp_path / "base.npz")["samples"], npz["stage_0"],
                             atol=1e-5)


@pytest.fixture
def config_only_stages(tmp_path):
  """Workdirs holding only the configs of the cascade's stages (no checkpoint needed to check
  how they chain)."""
  made = {}
  for name, config in (("text8", digits_text.get_config()),
                       ("text4", digits_text.get_config("base4")),
                       ("sr", digits_sr.get_config())):
    made[name] = Workdir(tmp_path / name)
    made[name].save_config(config)
  return made


def test_stages_that_do_not_chain_are_named(config_only_stages):
  w = config_only_stages
  defaults = common.base_config()
  with pytest.raises(ValueError, match=r"stage 1 \(.*sr\) upsamples 4x4x1 images, but stage 0 "
                                       r"\(.*text8\) draws 8x8x1"):
    cascade.load([w["text8"], w["sr"]], defaults=defaults)
  with pytest.raises(ValueError, match=r"stage 0 \(.*sr\) is a super-resolution model"):
    cascade.load([w["sr"], w["sr"]], defaults=defaults)
  with pytest.raises(ValueError, match=r"stage 1 \(.*text4\) is not a super-resolution model"):
    cascade.load([w["text4"], w["text4"]], defaults=defaults)
  with pytest.raises(ValueError, match="at least two stages"):
    cascade.load([w["text4"]], defaults=defaults)
  with pytest.raises(ValueError, match=r"unknown config.sample field\(s\) \['noise_levle'\]"):
    cascade.load([w["text4"], w["sr"]], [{}, {"noise_levle": 0.1}], defaults=defaults)
  stages = cascade.load([w["text4"], w["sr"]], [{"threshold": 0.995}, {"noise_level": 0.3}],
                        defaults=defaults)
  assert [s.config.sample.threshold for s in stages] == [0.995, 0.0]
  assert stages[1].config.sample.noise_level == 0.3


def test_a_low_res_image_of_the_wrong_size_is_one_clear_error(config_only_stages, tmp_path):
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "big.png")
  with pytest.raises(ValueError, match=r"--low_res=.*big.png has shape \(8, 8, 1\); the "
                                       r"model takes 4x4 images with 1 channel"):
    run_sample_main(f"--workdir={config_only_stages['sr']}", f"--low_res={tmp_path}/big.png")
  with pytest.raises(ValueError, match="--low_res needs a super-resolution model"):
    run_sample_main(f"--workdir={config_only_stages['text4']}",
                    f"--low_res={tmp_path}/big.png")
  config = config_only_stages["sr"].load_config(defaults=common.base_config())
  net = build.model(config)
  with pytest.raises(ValueError, match=r"low-res input has shape \(2, 8, 8, 1\); this "
                                       r"super-resolution model takes 4x4"):
    sample.request(config, net, build.schedule(config), num_images=2, batch_size=2,
                   low_res=np.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="needs a low-res input"):
    sample.request(config, net, build.schedule(config), num_images=2, batch_size=2)
