"""Test-wide setup and the helpers several test files share.

JAX's fake CPU devices and the persistent compile cache must be set before JAX initializes its
backends, which is why they live here. Shared helpers (`CompileCounter`, `assert_law`) are
imported by the tests as `from conftest import ...`.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

try:
  # torch's CUDA wheels bring triton, which segfaults when it loads after TensorFlow (seen with
  # torch 2.14.1 and tensorflow-cpu 2.21); loaded first, both work. The parity tests import
  # torch, diffusers and transformers.
  import triton  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:
  pass

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

NUM_CPU_DEVICES = 8
jax.config.update("jax_num_cpu_devices", NUM_CPU_DEVICES)
_CACHE = os.environ.setdefault(  # exported, so scripts run by tests share the cache
    "DIFFAX_TEST_COMPILATION_CACHE",
    os.path.join(os.path.expanduser("~"), ".cache", "diffax", "jax_test_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import digits  # pylint: disable=g-import-not-at-top,wrong-import-position


class CompileCounter:
  """Counts XLA compilations inside a `with` block (the backend-compile event fires on
  persistent-cache hits too): `names` lists the compiled functions."""

  def __init__(self):
    self.names = []

  def __call__(self, event, duration, **kwargs):
    del duration
    if event == "/jax/core/compile/backend_compile_duration":
      self.names.append(kwargs.get("fun_name"))

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def assert_law(x, mean, var, z=5.0):
  """Sample mean/variance per entry (over axis 0) within z standard errors of a Gaussian law."""
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), z * np.sqrt(var / n))
  np.testing.assert_array_less(np.abs(x.var(0) - var), z * var * np.sqrt(2 / n))


@pytest.fixture(scope="session")
def tiny_config():
  """`tiny_config(**{"section.field": value})`: the smoke digits config of the training tests.

  They share its model and batch, so one compiled train step (and its persistent-cache entry)
  serves all of them; the overrides change only what a test is about.
  """
  def build(**overrides):
    c = digits.get_config("smoke")
    c.update_from_flattened_dict({
        "train.log_every": 1, "train.checkpoint_every": 10, "train.num_steps": 20,
        "train.batch_size": 16, "sample.num_images": 8, "sample.batch_size": 8,
        "sample.num_steps": 5, **overrides})
    return c
  return build


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices=NUM_CPU_DEVICES):
  """A script run like this process: 8 fake CPU devices (or `devices`) and the tests'
  compilation cache."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              DIFFAX_COMPILATION_CACHE=os.environ["DIFFAX_TEST_COMPILATION_CACHE"])


def run_script(name, *args, timeout=600, devices=NUM_CPU_DEVICES):
  """Runs scripts/<name>.py with `args` as a user would, on `devices` fake CPU devices; returns
  the CompletedProcess."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, os.path.join(REPO, "scripts", f"{name}.py"), *args],
                        env=subprocess_env(devices), capture_output=True, text=True,
                        timeout=timeout)


def load_script(name):
  """scripts/<name>.py as a module, loaded once per session: its absl flags can be defined
  only once, however many test files call its main."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  key = f"diffax_script_{name}"
  if key not in sys.modules:
    spec = importlib.util.spec_from_file_location(key, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[key] = module
  return sys.modules[key]


def run_sample_main(*args):
  """scripts/sample.py's main on `args` in this process (sys.argv too, where its config flag
  --cascade reads overrides); errors are raised, not printed."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  script = load_script("sample")
  saved, sys.argv = sys.argv, ["sample.py", *args]
  try:
    script.main(flags.FLAGS(sys.argv))
  finally:
    flags.FLAGS.unparse_flags()
    sys.argv = saved


# configs/digits_cond.py at test size: the class-conditional digits model that the guidance,
# sample.py and evaluation tests judge. Trained once per session through scripts/train.py.
DIGITS_COND_OVERRIDES = (
    "--config.model.base_channels=16", "--config.model.num_res_blocks=1",
    "--config.model.attention_resolutions=()", "--config.model.num_groups=8",
    "--config.model.dropout=0.0", "--config.train.num_steps=300",
    "--config.train.checkpoint_every=300", "--config.train.log_every=50",
    "--config.train.sample_every=0", "--config.optim.warmup_steps=50",
    "--config.optim.ema_decay=0.98", "--config.sample.num_images=20",
    "--config.sample.batch_size=20", "--config.sample.num_steps=20")


# configs/classifier.py at test size: the feature classifier of the evaluation tests.
CLASSIFIER_OVERRIDES = {"train.num_steps": 150, "train.batch_size": 64,
                        "train.checkpoint_every": 150, "train.log_every": 50, "eval.every": 75,
                        "optim.warmup_steps": 20}


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory):
  """The workdir of configs/classifier.py (digits) trained for 150 steps."""
  from configs import classifier  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import train  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("digits_classifier")
  config = classifier.get_config()
  config.update_from_flattened_dict(CLASSIFIER_OVERRIDES)
  train.train_and_evaluate(config, str(workdir))
  return workdir


@pytest.fixture(scope="session")
def digits_cond_run(tmp_path_factory, classifier_run):
  """The workdir of configs/digits_cond.py trained for 300 steps by scripts/train.py, its
  samples evaluated at steps 150 and 300 in `classifier_run`'s feature space."""
  workdir = tmp_path_factory.mktemp("digits_cond")
  result = run_script("train", f"--config={REPO}/configs/digits_cond.py",
                      f"--workdir={workdir}", *DIGITS_COND_OVERRIDES,
                      "--config.eval.every=150", "--config.eval.num_samples=100",
                      "--config.eval.batch_size=50", "--config.eval.num_steps=10",
                      f"--config.eval.classifier_workdir={classifier_run}")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


# The text-to-image and cascade systems at test size (tests/test_text_digits.py,
# test_cascade.py): each trained once per session through
# scripts/train.py. Tiny U-Nets, no self-attention; the text models keep their cross-attention
# (the middle block's and the one named).
_TINY = ("--config.model.base_channels=16", "--config.model.num_res_blocks=1",
         "--config.model.attention_resolutions=()", "--config.model.num_groups=8",
         "--config.model.dropout=0.0", "--config.train.log_every=50",
         "--config.train.sample_every=0", "--config.optim.warmup_steps=50",
         "--config.optim.ema_decay=0.98", "--config.sample.num_images=10",
         "--config.sample.batch_size=10", "--config.sample.num_steps=20")
TEXT_OVERRIDES = _TINY + ("--config.model.num_heads=2",
                          "--config.model.cross_attention_resolutions=(4,)",
                          "--config.train.num_steps=300", "--config.train.checkpoint_every=300")
SR_OVERRIDES = _TINY + ("--config.train.num_steps=600", "--config.train.checkpoint_every=600")


def _train(tmp_path_factory, name, config, overrides):
  workdir = tmp_path_factory.mktemp(name)
  result = run_script("train", f"--config={REPO}/configs/{config}", f"--workdir={workdir}",
                      *overrides)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope="session")
def digits_text_run(tmp_path_factory):
  """The workdir of configs/digits_text.py (8x8, captions) trained for 300 steps."""
  return _train(tmp_path_factory, "digits_text", "digits_text.py", TEXT_OVERRIDES)


@pytest.fixture(scope="session")
def digits_text4_run(tmp_path_factory):
  """The 4x4 text-conditional base of the digits cascade (configs/digits_text.py:base4)."""
  return _train(tmp_path_factory, "digits_text4", "digits_text.py:base4",
                _TINY + ("--config.model.num_heads=2",
                         "--config.model.cross_attention_resolutions=(2,)",
                         "--config.train.num_steps=300", "--config.train.checkpoint_every=300"))


@pytest.fixture(scope="session")
def digits_sr_run(tmp_path_factory):
  """The 4x4 -> 8x8 super-resolution stage (configs/digits_sr.py) trained for 600 steps."""
  return _train(tmp_path_factory, "digits_sr", "digits_sr.py", SR_OVERRIDES)


def embedded_digits():
  """scikit-learn's digits as the embedded dataset stores them: (f32 [1797, 8, 8, 1] in
  [-1, 1], i32 [1797] labels)."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  data = sk_datasets.load_digits()
  images = np.round(data.images * (255.0 / 16.0)) / 127.5 - 1.0
  return images[..., None].astype(np.float32), data.target.astype(np.int32)


@pytest.fixture(scope="session")
def digit_classifier():
  """A logistic regression on the embedded digits: the judge of the digits models' samples
  (`predict` takes [N, 64] in [-1, 1])."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  images, labels = embedded_digits()
  clf = linear_model.LogisticRegression(max_iter=2000)
  clf.fit(images.reshape(len(images), -1), labels)
  return clf


# configs/digits_autoencoder.py and configs/digits_latent.py at test size: the two stages of a
# latent diffusion model (a 16-channel autoencoder, f=2, 8x8x1 <-> 4x4x2; a class-conditional
# U-Net on its latents), each trained once per session through scripts/train.py, on 2 fake
# devices (still data-parallel; for models this small 8 devices' threads cost 2x the time on
# 2 cores). The tests load them on 8.
STAGE_DEVICES = 2
DIGITS_AUTOENCODER_OVERRIDES = (
    "--config.model.base_channels=16", "--config.model.num_res_blocks=1",
    "--config.model.num_groups=8", "--config.train.batch_size=32",
    "--config.train.num_steps=500", "--config.train.checkpoint_every=500",
    "--config.train.log_every=50", "--config.train.sample_every=0",
    "--config.optim.learning_rate=2e-3", "--config.optim.ema_decay=0.99",
    "--config.autoencoder.num_images=16")

DIGITS_LATENT_OVERRIDES = (
    "--config.model.base_channels=16", "--config.model.num_res_blocks=1",
    "--config.model.attention_resolutions=()", "--config.model.num_groups=8",
    "--config.model.dropout=0.0", "--config.train.num_steps=400",
    "--config.train.checkpoint_every=400", "--config.train.log_every=50",
    "--config.train.sample_every=0", "--config.optim.warmup_steps=50",
    "--config.optim.ema_decay=0.98", "--config.sample.num_images=20",
    "--config.sample.batch_size=20", "--config.sample.num_steps=20")


def script_failure(result) -> str:
  """What a failed script printed on stderr, without progress bars and the list of loaded
  extension modules that a fatal error appends."""
  lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
           if line.strip() and not line.startswith(("training:", "sampling:", "Extension modules"))]
  return f"exit status {result.returncode}:\n" + "\n".join(lines[:30] + ["..."] + lines[-30:])


@pytest.fixture(scope="session")
def digits_autoencoder_run(tmp_path_factory):
  """The workdir of configs/digits_autoencoder.py trained for 500 steps by scripts/train.py."""
  workdir = tmp_path_factory.mktemp("digits_autoencoder")
  result = run_script("train", f"--config={REPO}/configs/digits_autoencoder.py",
                      f"--workdir={workdir}", *DIGITS_AUTOENCODER_OVERRIDES,
                      devices=STAGE_DEVICES)
  assert result.returncode == 0, script_failure(result)
  return workdir


@pytest.fixture(scope="session")
def digits_latent_run(tmp_path_factory, digits_autoencoder_run):
  """The workdir of configs/digits_latent.py trained for 400 steps by scripts/train.py on the
  latents of `digits_autoencoder_run`."""
  workdir = tmp_path_factory.mktemp("digits_latent")
  result = run_script("train", f"--config={REPO}/configs/digits_latent.py",
                      f"--workdir={workdir}",
                      f"--config.latent.autoencoder_workdir={digits_autoencoder_run}",
                      *DIGITS_LATENT_OVERRIDES, devices=STAGE_DEVICES)
  assert result.returncode == 0, script_failure(result)
  return workdir


# unCLIP's stages at test size (tests/test_unclip.py): the contrastive image tower of
# configs/digits_clip.py, trained once per session through scripts/train.py (measured: held-out
# zero-shot accuracy 0.96 after 300 steps).
CLIP_OVERRIDES = ("--config.model.base_channels=16", "--config.model.hidden_dim=128",
                  "--config.train.num_steps=300", "--config.train.checkpoint_every=300",
                  "--config.eval.every=150")


@pytest.fixture(scope="session")
def digits_clip_run(tmp_path_factory):
  """The workdir of configs/digits_clip.py (the contrastive stage) trained for 300 steps."""
  workdir = tmp_path_factory.mktemp("digits_clip")
  result = run_script("train", f"--config={REPO}/configs/digits_clip.py",
                      f"--workdir={workdir}", *CLIP_OVERRIDES, devices=STAGE_DEVICES)
  assert result.returncode == 0, script_failure(result)
  return workdir


# configs/digits_prior.py at test size, on `digits_clip_run`'s embeddings (measured: every one
# of the evaluation's 100 samples nearest its prompted digit's mean embedding, 300 steps, 25 s).
PRIOR_OVERRIDES = ("--config.model.hidden_dim=128", "--config.model.num_layers=2",
                   "--config.train.num_steps=300", "--config.train.checkpoint_every=300",
                   "--config.eval.every=150", "--config.sample.num_steps=20")


@pytest.fixture(scope="session")
def digits_prior_run(tmp_path_factory, digits_clip_run):
  """The workdir of configs/digits_prior.py trained for 300 steps over `digits_clip_run`."""
  workdir = tmp_path_factory.mktemp("digits_prior")
  result = run_script("train", f"--config={REPO}/configs/digits_prior.py",
                      f"--workdir={workdir}",
                      f"--config.prior.contrastive_workdir={digits_clip_run}",
                      *PRIOR_OVERRIDES, devices=STAGE_DEVICES)
  assert result.returncode == 0, script_failure(result)
  return workdir


# configs/digits_decoder.py at test size (the tiny U-Net of the text tests, cross-attention at
# 4x4 reading the embedding's 4 tokens), on `digits_clip_run`'s embeddings (measured: variations
# of held-out digits keep their class 97% of the time at guidance 3).
DECODER_OVERRIDES = _TINY + ("--config.model.num_heads=2", "--config.train.num_steps=300",
                             "--config.train.checkpoint_every=300")


@pytest.fixture(scope="session")
def digits_decoder_run(tmp_path_factory, digits_clip_run):
  """The workdir of configs/digits_decoder.py trained for 300 steps over `digits_clip_run`."""
  workdir = tmp_path_factory.mktemp("digits_decoder")
  result = run_script("train", f"--config={REPO}/configs/digits_decoder.py",
                      f"--workdir={workdir}",
                      f"--config.decoder.contrastive_workdir={digits_clip_run}",
                      *DECODER_OVERRIDES, devices=STAGE_DEVICES)
  assert result.returncode == 0, script_failure(result)
  return workdir


# The end-to-end tier: tests that train one of these stages through the real scripts (latent
# diffusion, text, cascades, unCLIP, video and audio) and judge what it draws. They take longer
# than the rest of the suite together, so `python -m pytest` (CI) leaves them out and
# `python -m pytest -m slow` runs them (README, "Tests").
END_TO_END_RUNS = frozenset({
    "digits_autoencoder_run", "digits_latent_run", "latent_config", "digits_text_run",
    "digits_text4_run", "digits_sr_run", "digits_clip_run", "digits_prior_run",
    "digits_decoder_run", "video_run", "audio_run"})


def pytest_collection_modifyitems(items):
  for item in items:
    if END_TO_END_RUNS & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
