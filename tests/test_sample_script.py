"""scripts/sample.py as a user runs it: every flag takes effect, images come from the EMA
params, image i depends on the seed and i alone, and bad input is one line.

The flags are checked in-process on conftest's `digits_cond_run` (configs/digits_cond.py trained
through scripts/train.py), by calling the script's own `main`; the one-line errors by running
the scripts as subprocesses (test_cli.py).
"""

import contextlib

from absl import flags
import jax
import numpy as np
from PIL import Image
import pytest

from configs import common
from configs import digits
from configs import digits_cond
from diffax import sampling
from diffax.pipeline import build
from diffax.pipeline import checkpoint
from diffax.pipeline import checks
from diffax.pipeline import images
from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import sample
from diffax.pipeline import state as state_lib
from diffax.pipeline.workdir import Workdir
from conftest import embedded_digits, load_script

sample_script = load_script("sample")

SHAPE = (8, 8, 1)
N = 10  # images per run; small settings keep each run to a compile of a tiny sampler


@contextlib.contextmanager
def parsed(*args):
  try:
    yield flags.FLAGS(["sample.py", *args])
  finally:
    flags.FLAGS.unparse_flags()


def run(workdir, tmp_path, *args, name="out"):
  """scripts/sample.py's main with `args`; returns the samples it wrote."""
  out = tmp_path / f"{name}.png"
  with parsed(f"--workdir={workdir}", f"--out={out}", f"--num_samples={N}", "--num_steps=8",
              *args) as argv:
    sample_script.main(argv)
  assert out.exists()
  return np.load(tmp_path / f"{name}.npz")["samples"]


@pytest.fixture(scope="module")
def base(digits_cond_run, tmp_path_factory):
  """The default run's samples (guidance 3, dpmpp_2m, labels i % 10), and where it lives."""
  tmp = tmp_path_factory.mktemp("sample_script")
  return digits_cond_run, tmp, run(digits_cond_run, tmp, name="base")


def differs(a, b):
  return float(np.abs(a - b).max()) > 1e-3


# --- every flag takes effect -----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("--seed=1",), ("--spacing=linspace",), ("--sampler=ddim", "--eta=1.0"),
    ("--threshold=0.6",), ("--guidance_scale=0",), ("--num_steps=4",), ("--clip_x0=false",),
], ids=lambda a: " ".join(a))
def test_each_sampling_flag_changes_the_samples(base, args):
  workdir, tmp, samples = base
  other = run(workdir, tmp, *args, name="flag")
  assert other.shape == samples.shape and differs(other, samples), args


def test_eta_takes_effect_on_ddim(base):
  workdir, tmp, _ = base
  a = run(workdir, tmp, "--sampler=ddim", "--eta=0", name="eta0")
  b = run(workdir, tmp, "--sampler=ddim", "--eta=1", name="eta1")
  assert differs(a, b)


def test_class_label_and_guidance_draw_the_asked_digit(base, digit_classifier):
  workdir, tmp, samples = base
  predict = lambda x: digit_classifier.predict(x.reshape(len(x), -1))
  assert np.mean(predict(samples) == np.arange(N) % 10) > 0.6  # default: image i is i % 10
  threes = run(workdir, tmp, "--class_label=3", name="threes")
  assert np.mean(predict(threes) == 3) > 0.6
  unguided = run(workdir, tmp, "--class_label=3", "--guidance_scale=0", name="unguided")
  assert np.mean(predict(unguided) == 3) < np.mean(predict(threes) == 3)


def test_editing_flags(base, tmp_path):
  workdir, tmp, samples = base
  known = embedded_digits()[0][5]  # [8, 8, 1]
  image, mask = tmp_path / "digit.png", tmp_path / "mask.png"
  Image.fromarray(np.round((known[..., 0] + 1) * 127.5).astype(np.uint8)).save(image)
  top = np.zeros((8, 8), np.uint8)
  top[:4] = 255
  Image.fromarray(top).save(mask)
  known = images.load_image(str(image), SHAPE)[0]  # as the script reads it
  inpainted = run(workdir, tmp, f"--init_image={image}", f"--mask={mask}", name="inpaint")
  np.testing.assert_array_equal(inpainted[:, :4], np.broadcast_to(known[:4], (N, 4, 8, 1)))
  assert differs(inpainted[:, 4:], np.broadcast_to(known[4:], (N, 4, 8, 1)))
  resampled = run(workdir, tmp, f"--init_image={image}", f"--mask={mask}", "--resample=3",
                  name="repaint")
  np.testing.assert_array_equal(resampled[:, :4], inpainted[:, :4])
  assert differs(resampled, inpainted)
  light = run(workdir, tmp, f"--init_image={image}", "--strength=0.05", name="sdedit")
  assert np.abs(light - known).mean() < 0.1  # barely edited
  heavy = run(workdir, tmp, f"--init_image={image}", "--strength=0.9", name="sdedit_heavy")
  assert np.abs(heavy - known).mean() > 2 * np.abs(light - known).mean()


# --- the EMA params, and image i whatever the batching -----------------------------------------

def test_samples_come_from_the_ema_params(base):
  """The script's samples are the library's sampler on the checkpoint's EMA params, not on its
  raw params (which differ after training)."""
  workdir, tmp, _ = base
  ours = run(workdir, tmp, "--sampler=ddim", "--num_steps=8", name="ema")
  config = Workdir(workdir).load_config(defaults=common.base_config())
  net, schedule = build.model(config), build.schedule(config)
  tx, _ = optim.create_optimizer(config)
  create = lambda rng: state_lib.create_train_state(net.init_fn, tx, rng)
  with checkpoint.from_config(config, Workdir(workdir)) as ckpt:
    state = ckpt.restore(jax.eval_shape(create, jax.random.key(0)))
  sample_fn = sampling.make_sampler(net.apply_fn, schedule, (N, *SHAPE), sampler="ddim",
                                    max_steps=8, spacing=config.sample.spacing, clip_x0=True,
                                    null_cond=net.null_cond)
  draw = lambda params: np.asarray(sample_fn(
      params, jax.random.key(0), cond={"label": np.arange(N) % 10}, guidance_scale=3.0))
  np.testing.assert_allclose(ours, draw(state.ema_params), atol=1e-5)
  assert differs(draw(state.params), ours)


def test_image_i_does_not_depend_on_batch_size(base):
  workdir, tmp, _ = base
  whole = run(workdir, tmp, "--batch_size=10", name="b10")
  for batch in (4, 3):  # 4: the last batch is cut short; 3 does not divide the 8 devices
    np.testing.assert_allclose(run(workdir, tmp, f"--batch_size={batch}", name=f"b{batch}"),
                               whole, atol=1e-5)


def test_image_i_does_not_depend_on_device_count(base):
  workdir, _, _ = base
  config = Workdir(workdir).load_config(defaults=common.base_config())
  net, schedule = build.model(config), build.schedule(config)
  params, _ = sample.load_ema_params(Workdir(workdir), config, net)
  drawn = {}
  for devices, batch in ((1, 4), (4, 4), (8, 3)):
    mesh = parallel.create_mesh(jax.devices()[:devices])
    req = sample.request(config, net, schedule, num_images=8, batch_size=batch, mesh=mesh)
    # 3 on 8 devices is drawn as 8, one image per device, not 3 on every device.
    assert req.batch_size == max(batch, devices)
    drawn[devices] = req(jax.device_get(params), jax.random.key(0))
  np.testing.assert_allclose(drawn[1], drawn[4], atol=1e-5)
  np.testing.assert_allclose(drawn[1], drawn[8], atol=1e-5)


# --- reading images ---------------------------------------------------------------------------

def test_png_image_maps_to_minus_one_one(tmp_path):
  pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # 0 .. 252
  path = str(tmp_path / "digit.png")
  Image.fromarray(pixels).save(path)
  image = images.load_image(path, SHAPE, name="--init_image")
  assert image.shape == (1, 8, 8, 1) and image.dtype == np.float32
  np.testing.assert_allclose(image[0, ..., 0], pixels / 127.5 - 1.0, atol=1e-6)


def test_png_mask_is_nonzero(tmp_path):
  pixels = np.zeros((8, 8), np.uint8)
  pixels[:4] = 255
  pixels[4, 0] = 1  # any nonzero value is a known pixel
  path = str(tmp_path / "mask.png")
  Image.fromarray(pixels).save(path)
  mask = images.load_image(path, SHAPE, name="--mask", mask=True)
  np.testing.assert_array_equal(mask[0, ..., 0] != 0, pixels != 0)


@pytest.mark.parametrize("key", ["samples", "image"])
def test_npz_keys_and_batches(tmp_path, key):
  stack = np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 8, 8, 1)
  path = str(tmp_path / "x.npz")
  np.savez(path, **{key: stack})
  np.testing.assert_array_equal(images.load_image(path, SHAPE), stack)


def test_size_mismatch_and_bad_npz_are_clear_errors(tmp_path):
  path = str(tmp_path / "big.png")
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
  with pytest.raises(ValueError, match=r"--init_image=.*\(28, 28, 1\).*8x8"):
    images.load_image(path, SHAPE, name="--init_image")
  npz = str(tmp_path / "bad.npz")
  np.savez(npz, other=np.zeros(SHAPE))
  with pytest.raises(ValueError, match="'samples' or 'image'"):
    images.load_image(npz, SHAPE, name="--init_image")
  with pytest.raises(FileNotFoundError, match="no such file"):
    images.load_image(str(tmp_path / "missing.png"), SHAPE, name="--mask", mask=True)


# --- flag and config checks -------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--mask=m.png"], "--mask needs --init_image"),
    (["--strength=0.5"], "--strength .* needs --init_image"),
    (["--init_image=x.png"], "--init_image needs --mask .* or --strength"),
    (["--init_image=x.png", "--resample=3"], "--resample .* needs --mask"),
])
def test_flag_combinations_fail_before_loading_anything(args, message):
  with parsed("--workdir=/nonexistent", *args) as argv:
    with pytest.raises(ValueError, match=message):
      sample_script.main(argv)


@pytest.mark.parametrize("config_name, field, value, message", [
    ("digits", "guidance_scale", 3.0, r"guidance_scale=3.0 needs a conditional model"),
    ("digits", "class_label", 3, r"class_label must be -1 \(an unconditional model"),
    ("digits_cond", "class_label", 10, r"class_label must be -1 .* or 0 .. 9, got 10"),
    ("digits_cond", "num_steps", 1001, r"sample.num_steps=1001 exceeds"),
])
def test_cross_field_sampling_checks_name_the_fields(config_name, field, value, message):
  config = {"digits": digits, "digits_cond": digits_cond}[config_name].get_config()
  checks.check_sampling(config)  # the defaults are valid
  config.sample[field] = value
  with pytest.raises(ValueError, match=message):
    checks.check_sampling(config)


def test_guidance_needs_condition_dropout():
  config = digits_cond.get_config()
  config.train.cond_dropout = 0.0
  with pytest.raises(ValueError, match=r"train\.cond_dropout > 0"):
    checks.check_sampling(config)
  config.sample.guidance_scale = 1.0  # plain conditional sampling needs no null condition
  checks.check_sampling(config)


@pytest.mark.parametrize("field, value, message", [
    ("spacing", "karas", r"config\.sample: unknown spacing 'karas'; choose one of"),
    ("threshold", 1.5, r"config\.sample: threshold .* must lie in \(0, 1\]"),
    ("sampler", "ddmi", r"config\.sample: unknown sampler 'ddmi'"),
])
def test_single_sampling_values_are_checked_where_used(field, value, message):
  config = digits_cond.get_config()
  config.sample[field] = value
  net, schedule = build.model(config), build.schedule(config)
  with pytest.raises(ValueError, match=message):
    build.sampler(config, net, schedule, batch_size=4)
