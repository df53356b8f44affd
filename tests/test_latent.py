"""Latent diffusion end to end: an autoencoder run, a latent diffusion run on its latents, and
scripts/sample.py, each through the real scripts (conftest's `digits_autoencoder_run` and
`digits_latent_run`); then, in-process on the trained autoencoder, exact resume, the saved
scale factor, inpainting in latent space and the errors of bad latent configs.
"""

import json
import os

import jax
import numpy as np
import pytest
from sklearn import decomposition

from configs import common
from configs import digits_autoencoder
from configs import digits_latent
from diffax import autoencoder_loss
from diffax.pipeline import checkpoint
from diffax.pipeline import data
from diffax.pipeline import latent
from diffax.pipeline import metric_writer
from diffax.pipeline import parallel
from diffax.pipeline import sample
from diffax.pipeline import tasks
from diffax.pipeline import train
from diffax.pipeline.workdir import Workdir
from conftest import REPO, embedded_digits, run_script, script_failure

NUM_CLASSES = 10


def load(workdir):
  return Workdir(workdir).load_config(defaults=common.base_config())


@pytest.fixture(scope="module")
def latent_model(digits_latent_run):
  """(config, net, schedule, latent space, EMA params) of the trained latent run."""
  config = load(digits_latent_run)
  mesh = parallel.create_mesh()
  net, schedule, space = sample.load_model(config, mesh)
  params, step = sample.load_ema_params(Workdir(digits_latent_run), config, net, mesh=mesh)
  assert step == 400
  return config, net, schedule, space, params


# --- the autoencoder stage --------------------------------------------------------------------

def test_autoencoder_round_trips_held_out_digits(digits_autoencoder_run):
  """The 297 held-out digits, encoded (posterior mean) and decoded by the EMA params, beat the
  reconstructions of a 16-component PCA fit on the training digits: a linear code of half the
  latent's 32 numbers. (Measured: 22.9 dB for this 500-step test autoencoder; PCA-16 19.7 dB,
  PCA-32 26.4 dB, the mean digit 11.4 dB; configs/digits_autoencoder.py reaches 29 dB.)"""
  workdir = Workdir(digits_autoencoder_run)
  config = workdir.load_config()
  task = tasks.create(config)
  params, step = checkpoint.load_ema_params(workdir, config, task.init_fn)
  assert step == 500
  held_out = data.load_eval_images(config, 297, split="test")["image"]  # [297, 8, 8, 1]
  reconstructions = task.reconstruct(jax.device_get(params), held_out)
  psnr = float(np.mean(autoencoder_loss.psnr(held_out, reconstructions)))
  train_images = data.load_eval_images(config, 1500, split="train")["image"].reshape(1500, -1)
  pca = decomposition.PCA(16).fit(train_images)
  flat = held_out.reshape(len(held_out), -1)
  pca_psnr = float(np.mean(autoencoder_loss.psnr(flat, pca.inverse_transform(pca.transform(flat)))))
  print(f"held-out PSNR: autoencoder {psnr:.2f} dB, PCA-16 {pca_psnr:.2f} dB")
  assert psnr > pca_psnr, (psnr, pca_psnr)
  # What the run shows: held-out images above their reconstructions, and the loss's terms.
  grid = np.load(os.path.join(workdir.samples, "step_00000500.npz"))
  assert grid["inputs"].shape == grid["reconstructions"].shape == (16, 8, 8, 1)
  np.testing.assert_allclose(grid["inputs"], held_out[:16])
  last = metric_writer.read_metrics(str(workdir))[-1]
  assert {"rec", "mse", "psnr", "kl"} <= set(last) and last["step"] == 500


# --- the latent diffusion stage ---------------------------------------------------------------

def test_scale_factor_makes_training_latents_unit_variance(digits_latent_run, latent_model):
  """Measured on the first 1,024 training digits when the run started and saved in its
  config.json, the scale makes the latents the train step encodes (`preprocess`: posterior
  draws) of all 1,500 training digits unit-variance."""
  config, _, _, space, _ = latent_model
  saved = json.load(open(Workdir(digits_latent_run).config))["latent"]
  assert saved["scale_factor"] == space.scale_factor and saved["autoencoder_step"] == 500
  images = data.load_eval_images(config, 1500, split="train")["image"]
  batch = {"x": images, "index": np.arange(1500)}
  latents = jax.jit(space.preprocess)(jax.device_get(space.params), batch,
                                      jax.random.key(7))["x"]  # [1500, 4, 4, 2]
  assert latents.shape == (1500, 4, 4, 2)
  print(f"std of the scaled training latents: {float(latents.std()):.4f} (scale factor "
        f"{space.scale_factor:.4f})")
  assert abs(float(latents.std()) - 1.0) < 0.03
  assert abs(space.scale_factor - 1.0) > 0.3  # unscaled, the latents are far from unit scale


def test_sample_script_draws_decoded_digits_of_the_requested_class(
    digits_latent_run, latent_model, tmp_path, digit_classifier):
  """scripts/sample.py on the latent run: 50 digits, labels i % 10, guidance 3. The .npz holds
  pixels (and, asked, the latents they decode from); a classifier trained on real digits reads
  most of them as the requested digit and sees most classes, where a poor model -- decoded
  noise from the latent prior, what a model that ignores its input draws -- scores chance."""
  _, _, _, space, _ = latent_model
  out = tmp_path / "samples.png"
  result = run_script("sample", f"--workdir={digits_latent_run}", "--num_samples=50",
                      "--guidance_scale=3", "--save_latents", f"--out={out}")
  assert result.returncode == 0, script_failure(result)
  drawn = np.load(tmp_path / "samples.npz")
  samples, latents = drawn["samples"], drawn["latents"]
  assert samples.shape == (50, 8, 8, 1) and latents.shape == (50, 4, 4, 2)
  np.testing.assert_allclose(parallel.to_host(space.decode(latents)), samples, atol=1e-5)
  labels = np.arange(50) % NUM_CLASSES
  predicted = digit_classifier.predict(samples.reshape(50, -1))
  accuracy = float(np.mean(predicted == labels))
  noise = np.random.default_rng(0).standard_normal((50, 4, 4, 2)).astype(np.float32)
  poor = parallel.to_host(space.decode(noise)).reshape(50, -1)
  poor_accuracy = float(np.mean(digit_classifier.predict(poor) == labels))
  print(f"accuracy: samples {accuracy:.2f}, decoded prior noise {poor_accuracy:.2f}; classes "
        f"seen {len(np.unique(predicted))}")
  assert len(np.unique(predicted)) >= 8
  assert accuracy > 0.5 and accuracy > poor_accuracy + 0.3, (accuracy, poor_accuracy)


def test_training_grid_holds_pixels_and_latents(digits_latent_run):
  grid = np.load(os.path.join(Workdir(digits_latent_run).samples, "step_00000400.npz"))
  assert grid["samples"].shape == (20, 8, 8, 1) and grid["latents"].shape == (20, 4, 4, 2)


def test_inpainting_works_in_latent_space(latent_model):
  """The mask is downsampled to the latent grid (a latent is known where its whole 2x2 block
  is). The known half comes back near the autoencoder's reconstruction of the init image, not
  exactly: the decoder (3x3 convolutions and mid attention) mixes the known latents with the
  generated ones. Measured on this test model: 0.24 mean |difference| in [-1, 1] (a pixel model
  keeps known pixels exactly), against 0.6 for samples drawn without the mask."""
  config, net, schedule, space, params = latent_model
  known = embedded_digits()[0][:2]  # [2, 8, 8, 1]
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:4] = 1.0  # the top half is known: latent rows 0 and 1
  draw = lambda **edit: sample.request(config, net, schedule, num_images=10, batch_size=10,
                                       mesh=space.mesh, latent_space=space, **edit)
  inpainting = draw(init_image=known, mask=mask)
  latent_mask = np.asarray(inpainting.batch_knobs(0).mask)
  assert latent_mask.shape == (10, 4, 4, 2)
  assert latent_mask[:, :2].all() and not latent_mask[:, 2:].any()
  out = inpainting(params, jax.random.key(3))  # [10, 8, 8, 1]: image i inpaints known[i % 2]
  free = draw()(params, jax.random.key(3))     # the same request without the mask
  reconstruction = parallel.to_host(space.decode(space.encode(known)))  # [2, 8, 8, 1]
  target = reconstruction[np.arange(10) % 2, :4]
  known_error = float(np.abs(out[:, :4] - target).mean())
  free_error = float(np.abs(free[:, :4] - target).mean())
  drawn_spread = float(out[0::2, 4:].std(axis=0).mean())
  print(f"inpainting: the known half is {known_error:.3f} off the init image's reconstruction "
        f"(mean |diff|), unmasked samples {free_error:.3f}; the drawn half spreads "
        f"{drawn_spread:.3f}")
  assert known_error < 0.5 * free_error
  assert drawn_spread > 0.1


# --- in-process runs on the trained autoencoder -----------------------------------------------

@pytest.fixture
def latent_config(digits_autoencoder_run):
  """`latent_config(**overrides)`: configs/digits_latent.py:smoke on the test autoencoder."""
  def build(**overrides):
    c = digits_latent.get_config("smoke")
    c.update_from_flattened_dict({
        "latent.autoencoder_workdir": str(digits_autoencoder_run), "train.log_every": 1,
        "train.checkpoint_every": 2, "train.num_steps": 4, "train.batch_size": 16,
        "sample.num_images": 8, "sample.batch_size": 8, "sample.num_steps": 2, **overrides})
    return c
  return build


def losses_by_step(workdir):
  return {r["step"]: r["loss"] for r in metric_writer.read_metrics(str(workdir))}


def test_latent_run_resumes_exactly_with_its_saved_scale(latent_config, tmp_path, monkeypatch):
  """The frozen autoencoder does not break exact resume: 2 + 2 steps log the losses of 4, and
  the resumed run reuses the saved scale factor instead of measuring it again."""
  reference, resumed = tmp_path / "reference", tmp_path / "resumed"
  train.train_and_evaluate(latent_config(), str(reference))
  train.train_and_evaluate(latent_config(**{"train.num_steps": 2}), str(resumed))
  scale = load(resumed).latent.scale_factor
  assert scale == load(reference).latent.scale_factor

  def measure(*args, **kwargs):
    raise AssertionError("a resumed run measured the scale factor again")

  monkeypatch.setattr(latent.LatentSpace, "measure_scale_factor", measure)
  train.train_and_evaluate(latent_config(), str(resumed))
  assert load(resumed).latent.scale_factor == scale
  ours, theirs = losses_by_step(resumed), losses_by_step(reference)
  assert sorted(ours) == list(range(1, 5))
  for step in range(3, 5):
    assert ours[step] == theirs[step], step
  with pytest.raises(ValueError, match=r"config\.latent\.scale_factor=.* was trained with"):
    train.train_and_evaluate(latent_config(**{"train.num_steps": 6,
                                              "latent.scale_factor": 2 * scale}),
                             str(resumed))


def other_autoencoder(tmp_path, name, **overrides):
  """A workdir holding an autoencoder config.json (and no checkpoint)."""
  c = digits_autoencoder.get_config("smoke")
  c.update_from_flattened_dict(overrides)
  workdir = Workdir(tmp_path / name)
  workdir.save_config(c)
  return str(workdir)


def diffusion_run(tmp_path):
  workdir = Workdir(tmp_path / "pixel_run")
  workdir.save_config(digits_latent.get_config())
  return str(workdir)


BAD_LATENT_CONFIGS = [
    ("missing", lambda tmp, ae: {"latent.autoencoder_workdir": str(tmp / "nowhere")},
     r"autoencoder_workdir=.*nowhere does not exist; train one first"),
    ("no config", lambda tmp, ae: {"latent.autoencoder_workdir": str(tmp)},
     r"holds no config\.json"),
    ("not an autoencoder", lambda tmp, ae: {"latent.autoencoder_workdir": diffusion_run(tmp)},
     r"is a config\.task='diffusion' run, not an autoencoder"),
    ("untrained", lambda tmp, ae: {"latent.autoencoder_workdir": other_autoencoder(tmp, "u")},
     r"holds no checkpoint yet \(untrained\)"),
    ("other size", lambda tmp, ae: {"latent.autoencoder_workdir": other_autoencoder(
        tmp, "s", **{"data.image_size": 16})},
     r"was trained on 16x16 images with 1 channel\(s\), but config\.data\.image_size=8"),
    ("other channels", lambda tmp, ae: {"latent.autoencoder_workdir": other_autoencoder(
        tmp, "c", **{"data.channels": 3})},
     r"with 3 channel\(s\), but config\.data\.image_size=8, config\.data\.channels=1"),
    ("no such step", lambda tmp, ae: {"latent.autoencoder_step": 7},
     r"config\.latent\.autoencoder_step=7: .* holds no checkpoint of that step \(it holds \[500\]\)"),
    ("u-net cannot downsample", lambda tmp, ae: {"model.channel_mult": (1, 2, 2, 2)},
     r"config\.model: the image size (HxW )?4x4 must be divisible by .*=8 .*takes the autoencoder's "
     r"4x4x2 latents: 8x8 images / f=2"),
    ("video data", lambda tmp, ae: {"data.kind": "video", "data.num_frames": 4},
     r"is set on config\.data\.kind='video': latent diffusion runs on images"),
    ("clip_x0", lambda tmp, ae: {"sample.clip_x0": True},
     r"config\.sample\.clip_x0=True clips x0 estimates to \[-1, 1\]"),
]


@pytest.mark.parametrize("make, message", [c[1:] for c in BAD_LATENT_CONFIGS],
                         ids=[c[0] for c in BAD_LATENT_CONFIGS])
def test_bad_latent_config_fails_before_anything_runs(latent_config, digits_autoencoder_run,
                                                      tmp_path, make, message):
  run = tmp_path / "run"
  config = latent_config(**make(tmp_path, digits_autoencoder_run))
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(run))
  assert not run.exists()  # nothing written


def test_the_gan_autoencoder_trains_through_the_pipeline(tmp_path):
  """With disc_weight > 0 the discriminator trains in the same state and step: its terms count
  from disc_start (the step's data batch carries the step), and the checkpoint holds both
  players."""
  c = digits_autoencoder.get_config("smoke")
  c.update_from_flattened_dict({
      "autoencoder.disc_weight": 0.5, "autoencoder.disc_start": 2,
      "autoencoder.disc_layers": 1, "train.num_steps": 4, "train.log_every": 1,
      "train.checkpoint_every": 4})
  state = train.train_and_evaluate(c, str(tmp_path))
  assert set(state.params) == {"autoencoder", "discriminator"}
  records = metric_writer.read_metrics(str(tmp_path))
  assert [r["disc_factor"] for r in records] == [0.0, 0.0, 1.0, 1.0]
  assert all(np.isfinite(r[k]) for r in records for k in ("d_loss", "g_loss", "d_weight"))
  assert records[-1]["d_weight"] > 0


def test_the_autoencoder_refuses_clips():
  c = digits_autoencoder.get_config("smoke")
  c.update_from_flattened_dict({"data.kind": "audio", "data.length": 64})
  with pytest.raises(ValueError, match=r"config\.task='autoencoder' on config\.data\.kind="
                                       r"'audio': the autoencoder takes images"):
    tasks.create(c)


def test_sample_refuses_an_autoencoder_run(digits_autoencoder_run):
  with pytest.raises(ValueError, match=r"is a config\.task='autoencoder' run; sampling draws "
                                       r"from diffusion runs"):
    sample.sample_workdir(Workdir(digits_autoencoder_run), load(digits_autoencoder_run))


def test_cli_names_a_missing_autoencoder_on_one_line(tmp_path):
  result = run_script("train", f"--config={REPO}/configs/digits_latent.py:smoke",
                      f"--workdir={tmp_path / 'run'}",
                      f"--config.latent.autoencoder_workdir={tmp_path / 'nowhere'}")
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1 and len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith("error: config.latent.autoencoder_workdir=") and (
      "does not exist" in lines[0])
  assert not (tmp_path / "run").exists()


def test_evaluate_script_scores_the_decoded_samples(digits_latent_run, classifier_run):
  """scripts/evaluate.py on a latent run judges pixels: the sampler draws latents, the
  autoencoder decodes them, and the classifier's feature distance sees digits of every class
  (undecoded latents would not even fit the classifier). The ideal denoiser and bits/dim are
  of pixel data: asked for on a latent run, each is one line."""
  common_flags = [f"--workdir={digits_latent_run}", f"--classifier_workdir={classifier_run}",
                  "--num_samples=60", "--batch_size=30"]
  for flag in ("--ideal", "--bits_per_dim=8"):
    refused = run_script("evaluate", *common_flags, "--network=false", flag)
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 1 and len(lines) == 1, refused.stderr[-2000:]
    assert lines[0].startswith("error: ") and "latent" in lines[0], lines[0]
  result = run_script("evaluate", *common_flags, "--samplers=dpmpp_2m:karras", "--steps=10",
                      "--table=latent")
  assert result.returncode == 0, script_failure(result)
  jsonl, _ = Workdir(digits_latent_run).eval_table("latent")
  with open(jsonl, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [r["model"] for r in rows] == ["real (held-out)", "network"]
  floor, network = rows
  print(f"latent run: FD {network['fd']:.2f} (floor {floor['fd']:.2f}), coverage "
        f"{network['coverage']:.3f}, accuracy {network.get('accuracy')}")
  assert network["coverage"] > 0.8
  assert network["fd"] < 5 * floor["fd"] + 5.0
