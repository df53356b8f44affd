"""The command line's contract: a user's mistake is one line, `error: ...`, on stderr, and a
non-zero exit; never a traceback (unless --debug). Each case runs the real script."""

import os

import numpy as np
from PIL import Image
import pytest

from configs import digits
from diffax.pipeline.workdir import Workdir
from conftest import REPO, run_script

SMOKE = f"--config={REPO}/configs/digits.py:smoke"


def assert_one_line_error(result, *expected):
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode != 0, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
  for text in expected:
    assert text in lines[0], lines[0]


TRAIN_ERRORS = [
    (["--config.sample.sampler=bogus"], ["config.sample", "'bogus'", "dpmpp_2m"]),
    (["--config.train.batch_size=3"], ["config.train.batch_size=3", "8 device(s)"]),
    (["--config.data.dataset=no_such_dataset"], ["config.data.dataset='no_such_dataset'"]),
    (["--config.diffusion.schedule=sigmoid"], ["config.diffusion.schedule='sigmoid'", "cosine"]),
    (["--config.diffusion.prediction=score"], ["config.diffusion", "'score'", "'v'"]),
    (["--config.model.num_groups=3"], ["config.model", "num_groups=3"]),
    (["--config.train.nmu_steps=3"], ["unknown config field 'nmu_steps'"]),
    (["--config.train.num_steps=x"], ["--config.train.num_steps=x"]),
]


@pytest.mark.parametrize("args, expected", TRAIN_ERRORS, ids=[a[0] for a, _ in TRAIN_ERRORS])
def test_train_config_errors_are_one_line(tmp_path, args, expected):
  result = run_script("train", SMOKE, f"--workdir={tmp_path}", *args)
  assert_one_line_error(result, *expected)
  assert not os.listdir(tmp_path)  # nothing written


def test_an_unknown_config_variant_fails_and_lists_the_variants(tmp_path):
  result = run_script("train", f"--config={REPO}/configs/digits.py:smok",
                      f"--workdir={tmp_path}")
  assert_one_line_error(result, "unknown config variant 'smok'", "['smoke']")
  result = run_script("train", f"--config={REPO}/configs/cifar10_ddpm.py:halff",
                      f"--workdir={tmp_path}")
  assert_one_line_error(result, "'halff'", "['smoke', 'half']")


def test_debug_shows_the_traceback(tmp_path):
  result = run_script("train", SMOKE, f"--workdir={tmp_path}", "--config.sample.sampler=bogus",
                      "--debug")
  assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.fixture
def corrupt_run(tmp_path):
  """A workdir whose only checkpoint is damaged."""
  workdir = Workdir(tmp_path / "run")
  config = digits.get_config("smoke")
  workdir.save_config(config)
  step = os.path.join(workdir.checkpoints, "10")
  os.makedirs(os.path.join(step, "state"))
  for name in ("commit_success.txt", "_CHECKPOINT_METADATA", "state/_METADATA"):
    with open(os.path.join(step, name), "w") as f:
      f.write("garbage")
  return workdir


def test_a_corrupt_checkpoint_is_one_line_and_kept(corrupt_run):
  for script, args in (("sample", []), ("train", [SMOKE])):
    result = run_script(script, f"--workdir={corrupt_run}", *args)
    assert_one_line_error(result, "none can be restored", "checkpoints")
    assert any(name.startswith("10") for name in os.listdir(corrupt_run.checkpoints))


@pytest.fixture
def config_only_run(tmp_path):
  workdir = Workdir(tmp_path / "run")
  workdir.save_config(digits.get_config("smoke"))
  return workdir


SAMPLE_ERRORS = [
    (lambda tmp, run: [f"--workdir={tmp / 'missing'}"], ["does not exist", "scripts/train.py"]),
    (lambda tmp, run: [f"--workdir={tmp}"], ["holds no config.json"]),
    (lambda tmp, run: [f"--workdir={run}"], ["no checkpoint in", "train first"]),
    (lambda tmp, run: [f"--workdir={run}", "--mask=m.png"], ["--mask needs --init_image"]),
    (lambda tmp, run: [f"--workdir={run}", "--sampler=ddmi"], ["--sampler"]),
    (lambda tmp, run: [f"--workdir={run}", "--guidance_scale=3"],
     ["guidance_scale=3.0 needs a conditional model"]),
    (lambda tmp, run: [f"--workdir={run}", f"--init_image={tmp / 'big.png'}", "--strength=0.5"],
     ["--init_image=", "8x8"]),
    (lambda tmp, run: [f"--workdir={run}", f"--init_image={tmp / 'small.png'}",
                       "--strength=2"],
     ["strength must lie in (0, 1]"]),
]


@pytest.mark.parametrize("make_args, expected", SAMPLE_ERRORS,
                         ids=["missing", "empty", "untrained", "mask", "sampler", "guidance",
                              "size", "strength"])
def test_sample_errors_are_one_line(tmp_path, config_only_run, make_args, expected):
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "big.png")
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
  result = run_script("sample", *make_args(tmp_path, config_only_run))
  assert_one_line_error(result, *expected)


@pytest.fixture
def config_only_runs(tmp_path):
  """Config-only workdirs of a class model, text models whose encoder directory lacks its
  weights or its tokenizer, and a super-resolution model: sample.py's checks come before any checkpoint."""
  from configs import digits_sr, digits_text  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import text  # pylint: disable=g-import-not-at-top
  broken = tmp_path / "encoder"
  broken.mkdir()
  for name in ("config.json", "tokenizer.json"):
    (broken / name).write_bytes(open(os.path.join(text.default_encoder_dir(), name), "rb").read())
  no_tokenizer = tmp_path / "encoder_no_tokenizer"
  no_tokenizer.mkdir()
  (no_tokenizer / "config.json").write_bytes((broken / "config.json").read_bytes())
  text_configs = {}
  for name, directory in (("text", broken), ("text_no_tokenizer", no_tokenizer)):
    text_configs[name] = digits_text.get_config("smoke")
    with text_configs[name].unlocked():
      text_configs[name].text.encoder = str(directory)
  runs = {}
  for name, config in (("class", digits.get_config("smoke")), *text_configs.items(),
                       ("sr", digits_sr.get_config("smoke"))):
    runs[name] = Workdir(tmp_path / name)
    runs[name].save_config(config)
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "big.png")
  return runs


TEXT_SR_ERRORS = [
    (lambda tmp, runs: [f"--workdir={runs['class']}", "--prompt=a handwritten seven"],
     ["--prompt needs a text-conditional model", "context_dim is 0"]),
    (lambda tmp, runs: [f"--workdir={runs['text']}", "--prompt=a handwritten seven"],
     ["has no weights model.safetensors", "encoder"]),
    (lambda tmp, runs: [f"--workdir={runs['text_no_tokenizer']}", "--prompt=a seven"],
     ["has no tokenizer.json", "encoder_no_tokenizer"]),
    (lambda tmp, runs: [f"--workdir={runs['text']}", f"--prompts_file={tmp / 'none.txt'}"],
     ["--prompts_file=", "none.txt: no such file"]),
    (lambda tmp, runs: [f"--workdir={runs['sr']}", f"--low_res={tmp / 'big.png'}"],
     ["--low_res=", "has shape (8, 8, 1)", "4x4 images"]),
]


@pytest.mark.parametrize("make_args, expected", TEXT_SR_ERRORS,
                         ids=["prompt_without_text", "encoder_without_weights",
                              "encoder_without_tokenizer", "missing_prompts_file",
                              "low_res_size"])
def test_text_and_super_resolution_errors_are_one_line(tmp_path, config_only_runs, make_args,
                                                       expected):
  result = run_script("sample", *make_args(tmp_path, config_only_runs))
  assert_one_line_error(result, *expected)
