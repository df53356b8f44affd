"""JAX's persistent compilation cache, so that a second run (or sample.py) does not compile the
same programs again."""

import os

import jax

DEFAULT_DIR = os.path.join("~", ".cache", "diffax", "jax_compilation_cache")


def enable() -> None:
  """Turns the cache on.

  `$DIFFAX_COMPILATION_CACHE` picks the directory ("" turns the cache off); a cache directory
  already set in JAX's own config (e.g. `$JAX_COMPILATION_CACHE_DIR`) is left alone.
  """
  if jax.config.jax_compilation_cache_dir:
    return
  path = os.environ.get("DIFFAX_COMPILATION_CACHE", DEFAULT_DIR)
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def directory():
  """The persistent cache's directory, or None when the cache is off."""
  return jax.config.jax_compilation_cache_dir or None
