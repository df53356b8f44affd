"""Compile time, cold (empty persistent cache) and warm (a new process reusing that cache).

Each measurement runs in its own Python process, so nothing is cached in memory: the parent
makes an empty cache directory, runs a child that compiles the program (cold), then a second
child with the same directory (warm: XLA's executable comes from the persistent cache, and only
tracing and lowering are redone). A child prints one JSON line:
  {"trace_lower_s": ..., "compile_s": ..., "total_s": ...}
The train step compiles as `diffax.pipeline.train` compiles it, through
`diffax.pipeline.saved_step`: cold traces, exports and saves the step beside the cache; warm loads
it and skips tracing as well (`--traced`: trace in both, the persistent cache alone).

  python -m benchmarks.compile_time --child sampler --width half --batch 64 --steps 50 \
      --cache_dir /tmp/cache
"""

import argparse
import json
import os
import tempfile
import time

from benchmarks import child


def _child(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", args.cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  from benchmarks import diffax_cases  # pylint: disable=g-import-not-at-top
  from diffax import sampling  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import build, parallel, saved_step  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import state as train_state  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  cfg = diffax_cases.config(args.width, args.batch)
  if args.what == "sampler":
    init_fn, apply_fn = build.model(cfg)
    params = jax.eval_shape(init_fn, jax.random.key(0))
    schedule = build.schedule(cfg)
    shape = (args.batch, 32, 32, 3)

    def run(params, rng):
      return sampling.sample(jax.tree_util.Partial(apply_fn, params), schedule, shape, rng,
                             sampler=args.sampler, num_steps=args.steps, clip_x0=True)

    fn, fn_args = jax.jit(run), (params, jax.random.key(1))
  else:
    init_fn, tx, step = diffax_cases.make_step(cfg)
    mesh = parallel.create_mesh(jax.devices()[:1])
    state = parallel.abstract_state(
        functools.partial(train_state.create_train_state, init_fn, tx), mesh, jax.random.key(0))
    batch = {"x": jax.ShapeDtypeStruct((args.batch, 32, 32, 3), np.float32)}
    step4 = lambda state, batch, rng, frozen: step(state, batch, rng)
    if not args.traced:  # as diffax.pipeline.train compiles it: the saved step, when there is one
      directory = os.path.join(args.cache_dir, saved_step.SUBDIR)
      loaded = os.path.isdir(directory) and bool(os.listdir(directory))
      start = time.perf_counter()
      saved_step.compile_train_step(step4, mesh, state, batch, jax.random.key(1), None,
                                    key=cfg.to_json_best_effort(sort_keys=True),
                                    directory=args.cache_dir)
      return {"total_s": time.perf_counter() - start,
              "saved_step": "loaded" if loaded else "traced and saved"}
    fn, fn_args = parallel.compile_train_step(step, mesh), (state, batch, jax.random.key(1))
  start = time.perf_counter()
  lowered = fn.lower(*fn_args)
  lowered_at = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {"trace_lower_s": lowered_at - start, "compile_s": done - lowered_at,
          "total_s": done - start}


def _run_child(what: str, width: str, batch: int, cache_dir: str, sampler: str = "ddim",
               steps: int = 50, traced: bool = False) -> dict:
  return child.run("compile_time", ["--child", what, "--width", width, "--batch", batch,
                                    "--cache_dir", cache_dir, "--sampler", sampler, "--steps",
                                    steps] + (["--traced"] if traced else []), "compile-time")


def cold_and_warm(what: str, width: str, batch: int, sampler: str = "ddim",
                  steps: int = 50, traced: bool = False) -> dict:
  """Compile `what` ("sampler" or "train") in a fresh process twice over one new cache dir.

  Returns:
    {"cold": child record, "warm": child record}; `total_s` is trace + lower + compile.
  """
  with tempfile.TemporaryDirectory(prefix="diffax_bench_cache_") as cache_dir:
    cold = _run_child(what, width, batch, cache_dir, sampler, steps, traced)
    warm = _run_child(what, width, batch, cache_dir, sampler, steps, traced)
  return {"cold": cold, "warm": warm}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--child", dest="what", choices=("sampler", "train"), required=True)
  parser.add_argument("--width", default="half")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--sampler", default="ddim")
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--cache_dir", required=True)
  parser.add_argument("--traced", action="store_true",
                      help="train: trace every time (the persistent cache only), not the saved step")
  print(json.dumps(_child(parser.parse_args())))


if __name__ == "__main__":
  main()
