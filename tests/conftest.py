"""Test-wide JAX setup: fake CPU devices for multi-device tests and a persistent compile cache.

Both must be set before JAX initializes its backends, which is why they live here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top

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
