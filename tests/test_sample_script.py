"""scripts/sample.py's editing inputs: PNG / .npz images read as [N, H, W, C] in [-1, 1] (masks as
nonzero = known), clear errors on a size mismatch and on flags that need one another; and the
sampling checks of `validation.validate_sampling` (field, value and what is allowed)."""

import importlib.util
import os

from absl import app
from absl import flags
import numpy as np
from PIL import Image
import pytest

from configs import digits
from configs import digits_cond
from diffax import validation

_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                       "sample.py")
_spec = importlib.util.spec_from_file_location("sample_script", _SCRIPT)
sample_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample_script)

SHAPE = (8, 8, 1)


def test_png_image_maps_to_minus_one_one(tmp_path):
  pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # 0 .. 252
  path = str(tmp_path / "digit.png")
  Image.fromarray(pixels).save(path)
  image = sample_script.load_image(path, "init_image", SHAPE)
  assert image.shape == (8, 8, 1) and image.dtype == np.float32
  np.testing.assert_allclose(image[..., 0], pixels / 127.5 - 1.0, atol=1e-6)


def test_png_mask_is_nonzero(tmp_path):
  pixels = np.zeros((8, 8), np.uint8)
  pixels[:4] = 255
  pixels[4, 0] = 1  # any nonzero value is a known pixel
  path = str(tmp_path / "mask.png")
  Image.fromarray(pixels).save(path)
  mask = sample_script.load_image(path, "mask", SHAPE, mask=True)
  np.testing.assert_array_equal(mask[..., 0] != 0, pixels != 0)


@pytest.mark.parametrize("key", ["samples", "image"])
def test_npz_keys_and_batches(tmp_path, key):
  images = np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 8, 8, 1)
  path = str(tmp_path / "x.npz")
  np.savez(path, **{key: images})
  np.testing.assert_array_equal(sample_script.load_image(path, "init_image", SHAPE), images)


def test_size_mismatch_and_bad_npz_are_clear_errors(tmp_path):
  path = str(tmp_path / "big.png")
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
  with pytest.raises(app.UsageError, match=r"--init_image=.*\(28, 28, 1\).*8x8"):
    sample_script.load_image(path, "init_image", SHAPE)
  npz = str(tmp_path / "bad.npz")
  np.savez(npz, other=np.zeros(SHAPE))
  with pytest.raises(app.UsageError, match="'samples' or 'image'"):
    sample_script.load_image(npz, "init_image", SHAPE)
  with pytest.raises(app.UsageError, match="no such file"):
    sample_script.load_image(str(tmp_path / "missing.png"), "mask", SHAPE, mask=True)


@pytest.mark.parametrize("args, message", [
    (["--mask=m.png"], "--mask needs --init_image"),
    (["--strength=0.5"], "--strength .* needs --init_image"),
    (["--init_image=x.png"], "--init_image needs --mask .* or --strength"),
    (["--init_image=x.png", "--strength=1.5"], r"--strength must lie in \(0, 1\]"),
    (["--init_image=x.png", "--resample=3"], "--resample .* needs --mask"),
])
def test_flag_combinations_fail_before_loading_anything(args, message):
  try:
    flags.FLAGS(["sample.py", "--workdir=/nonexistent"] + args)
    with pytest.raises(app.UsageError, match=message):
      sample_script.main(["sample.py"])
  finally:
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("config_name, field, value, message", [
    ("digits", "spacing", "karas", r"unknown sample.spacing 'karas'; choose one of \['karras'"),
    ("digits", "guidance_scale", 3.0, r"guidance_scale=3.0 needs a class-conditional model"),
    ("digits", "class_label", 3, r"class_label must be -1 \(an unconditional model"),
    ("digits_cond", "class_label", 10, r"class_label must be -1 .* or 0 .. 9, got 10"),
    ("digits_cond", "guidance_scale", -1.0, r"guidance_scale must be a number >= 0"),
    ("digits_cond", "threshold", 1.0, r"threshold must lie in \[0, 1\)"),
])
def test_validate_sampling_names_field_and_allowed_values(config_name, field, value, message):
  config = {"digits": digits, "digits_cond": digits_cond}[config_name].get_config()
  validation.validate_sampling(config)  # the defaults are valid
  config.sample[field] = value
  with pytest.raises(ValueError, match=message):
    validation.validate_sampling(config)


def test_guidance_needs_label_dropout():
  config = digits_cond.get_config()
  config.train.label_dropout = 0.0
  with pytest.raises(ValueError, match="train.label_dropout > 0"):
    validation.validate_sampling(config)
  config.sample.guidance_scale = 1.0  # plain conditional sampling needs no null label
  validation.validate_sampling(config)
