"""The pipeline's evaluation: the classifier task, evaluation during training, scripts/evaluate.py,
per-sample seeds, and the errors a user can run into.

conftest's `classifier_run` is configs/classifier.py trained by scripts/train.py; its
`digits_cond_run` is configs/digits_cond.py trained with evaluation every 150 steps in that
classifier's feature space.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from conftest import run_script
from configs import common
from configs import digits
from diffax.evaluation import ideal_denoiser
from diffax.pipeline import build
from diffax.pipeline import evaluate
from diffax.pipeline import features
from diffax.pipeline import metric_writer
from diffax.pipeline import parallel
from diffax.pipeline import sample
from diffax.pipeline.workdir import Workdir


def load(workdir, **eval_overrides):
  config = Workdir(workdir).load_config(defaults=common.base_config())
  with config.unlocked():
    config.eval.update(eval_overrides)
  return config


def test_the_classifier_task_learns_the_digits(classifier_run):
  records = [r for r in metric_writer.read_metrics(classifier_run) if "eval/accuracy" in r]
  assert [r["step"] for r in records] == [75, 150]
  assert records[-1]["eval/accuracy"] > 0.9, records  # held-out digits
  assert Workdir(classifier_run).load_config().task == "classifier"


def test_training_logs_the_feature_distance_beside_its_floor(digits_cond_run):
  records = [r for r in metric_writer.read_metrics(digits_cond_run) if "eval/fd" in r]
  assert [r["step"] for r in records] == [150, 300]
  for r in records:
    for key in ("fd", "kid", "coverage", "accuracy"):
      assert np.isfinite(r[f"eval/{key}"]) and np.isfinite(r[f"eval/{key}_floor"]), r
  assert records[0]["eval/fd_floor"] == records[1]["eval/fd_floor"]
  assert records[-1]["eval/accuracy"] > 0.5  # guided samples of the asked digit (chance 0.1)
  with open(Workdir(digits_cond_run).eval_log, encoding="utf-8") as f:
    lines = [json.loads(line) for line in f]
  assert [r["step"] for r in lines] == [150, 300]
  assert lines[0]["floor"]["num_samples"] == 297 and lines[0]["num_samples"] == 100
  assert lines[0]["features"] == "classifier" and lines[0]["sampler"] == "ddim"
  events = os.listdir(os.path.join(digits_cond_run, "tensorboard"))
  assert any(b"eval/fd" in open(os.path.join(digits_cond_run, "tensorboard", e), "rb").read()
             for e in events)


def test_evaluate_script_prints_the_sweep_beside_the_floor(digits_cond_run, classifier_run):
  result = run_script("evaluate", f"--workdir={digits_cond_run}",
                      "--samplers=dpmpp_2m:karras", "--steps=4,8", "--num_samples=60",
                      "--batch_size=30", f"--classifier_workdir={classifier_run}",
                      "--bits_per_dim=8")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "| real (held-out) |" in out and "| network | dpmpp_2m | karras | 8 | 8 |" in out
  assert "| ideal | dpmpp_2m | karras | 4 | 4 |" in out
  assert "only 60 samples for 128-d classifier features" in out  # the warning, in the output
  jsonl, md = Workdir(digits_cond_run).eval_table("sweep")
  with open(jsonl, encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert [(r["model"], r["steps"]) for r in rows] == [
      ("real (held-out)", None), ("real (training draws)", None), ("network", 4),
      ("network", 8), ("ideal", 4), ("ideal", 8)]
  network, ideal = rows[2:4], rows[4:]
  assert network[0]["compile_s"] > 0.5 and network[1]["compile_s"] < 0.1 * network[0][
      "compile_s"]  # one compile per sampler: 8 steps reuse the program of 4
  assert all(r["memorized"] == 1.0 for r in ideal)  # the ideal denoiser returns training images
  assert network[1]["accuracy"] > 0.5 and rows[0]["accuracy"] > 0.9
  assert "| real (held-out) |" in open(md, encoding="utf-8").read()
  bpd = json.load(open(Workdir(digits_cond_run).eval_file("bits_per_dim.json")))
  assert bpd["num_images"] == 8 and 0 < bpd["bits_per_dim"] < 8
  assert bpd["bits_per_dim"] == pytest.approx(bpd["prior"] + bpd["diffusion"] + bpd["decoder"])
  assert "bits/dim" in out


@pytest.fixture(scope="module")
def judge(digits_cond_run):
  """The digits_cond run's judge on 4 devices."""
  return evaluate.Judge.create(load(digits_cond_run), Workdir(digits_cond_run),
                               parallel.create_mesh(jax.devices()[:4]))


def test_sample_i_of_an_evaluation_depends_on_the_seed_and_i_alone(digits_cond_run, judge):
  """1 or 4 devices, batches of 8 or 16: the same images and the same numbers. (The model is
  the ideal denoiser, which compiles in seconds; the request is the evaluation's.)"""
  config = load(digits_cond_run, sampler="dpmpp_2m", spacing="karras", num_steps=10)
  net, noise_schedule = build.model(config), build.schedule(config)
  apply_fn, params = ideal_denoiser.ideal_denoiser(judge.reference_images, noise_schedule,
                                                   labels=judge.reference_labels)
  model = dataclasses.replace(net, apply_fn=apply_fn)
  c = evaluate.sampling_config(config)
  with c.unlocked():
    c.diffusion.prediction = "x0"
  judges = {4: judge, 1: evaluate.Judge.create(config, Workdir(digits_cond_run),
                                               parallel.create_mesh(jax.devices()[:1]))}
  drawn, scores = {}, {}
  for devices in (1, 4):
    mesh = parallel.create_mesh(jax.devices()[:devices])
    for batch in (8, 16):
      req = sample.request(c, model, noise_schedule, num_images=16, batch_size=batch,
                           mesh=mesh)
      drawn[devices, batch] = req(params, jax.random.key(config.eval.seed))
      scores[devices, batch] = judges[devices](evaluate.quantize(drawn[devices, batch]),
                                               req.per_image["cond"]["label"])
  for key in drawn:
    np.testing.assert_allclose(drawn[key], drawn[1, 8], atol=1e-5)
    for metric in ("fd", "kid", "coverage", "accuracy"):
      np.testing.assert_allclose(scores[key][metric], scores[1, 8][metric], rtol=1e-6)


def test_a_workdir_without_a_checkpoint_is_one_line(tmp_path):
  config = digits.get_config("smoke")
  Workdir(str(tmp_path)).save_config(config)
  result = run_script("evaluate", f"--workdir={tmp_path}")
  assert result.returncode == 1
  assert result.stderr.strip() == (f"error: no checkpoint in {tmp_path}/checkpoints: train "
                                   "first, or check --workdir (--debug shows the traceback)")


@pytest.mark.parametrize("field, value, message", [
    ("features", "inception", r"need pytorch-fid's weights: download https://github.com/"
                              r"mseitzer/pytorch-fid/.*--inception_weights"),
    ("metrics", ("fd", "fid"), r"config.eval.metrics has unknown \['fid'\]"),
    ("features", "clip", r"config.eval.features='clip' is unknown"),
    ("num_samples", 1, r"config.eval.num_samples must be an int >= 2"),
    ("sampler", "ddmi", r"config.eval.sampler='ddmi' is unknown"),
    ("spacing", "karas", r"config.eval.spacing='karas' is unknown"),
    ("num_steps", 5000, r"config.eval.num_steps=5000 must lie in \[1, 1000\]"),
])
def test_bad_eval_settings_fail_naming_the_field(field, value, message):
  config = digits.get_config()
  with config.unlocked():
    config.eval[field] = value
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    evaluate.check_config(config)


def test_a_missing_classifier_without_a_recipe_says_how_to_train_one(tmp_path):
  config = digits.get_config()
  with config.unlocked():
    config.eval.classifier = None
  with pytest.raises(ValueError, match=r"no feature classifier in .*python scripts/train.py "
                                       r"--config=configs/classifier.py:dataset=digits"):
    features.ensure_classifier(config, Workdir(str(tmp_path)))


def test_a_classifier_of_other_data_is_refused(classifier_run, tmp_path):
  config = digits.get_config()
  with config.unlocked():
    config.data.image_size = 16
    config.eval.classifier_workdir = str(classifier_run)
  with pytest.raises(ValueError, match=r"trained on data.image_size=8, this run's is 16"):
    features.ensure_classifier(config, Workdir(str(tmp_path)))


def test_images_of_the_wrong_range_and_few_samples(judge):
  images = np.zeros((50, 8, 8, 1), np.float32)
  with pytest.raises(ValueError, match=r"must lie in \[-1, 1\], got values in \[255, 255\]"):
    judge(images + 255)
  assert "only 50 samples for 128-d classifier features" in judge(images)["warning"]
