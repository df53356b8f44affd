r"""Seconds per sample of a config's network and sampler on this machine: one timed call each.

A simple, single measurement for the README's numbers (not an A/B against a peer): the
sampler of `config.sample` (steps, spacing, guidance, which doubles the batch), on random
parameters (the cost does not depend on their values), compiled first, then timed once per
batch size. Prints one JSON line per case after the machine record.

  python benchmarks/media_sample_cost.py --config=configs/moving_digits.py --batch 1 20
  python benchmarks/media_sample_cost.py --config=configs/tones.py --batch 1 16
"""

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_config(path):
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch", type=int, nargs="+", default=[1])
  parser.add_argument("--xla_flags", default=machine.RECOMMENDED_XLA_FLAGS)
  args = parser.parse_args()
  machine.prepend_xla_flags(args.xla_flags)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from diffax import models  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import build  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  print(json.dumps(machine.info(repo)), flush=True)
  config = load_config(args.config)
  net, schedule = build.model(config), build.schedule(config)
  params = jax.jit(net.init_fn)(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape),
                        params)  # zero-initialised layers would make the output trivially 0
  s = config.sample
  for batch in args.batch:
    sampler = build.sampler(config, net, schedule, batch_size=batch)
    cond = {"label": np.arange(batch) % config.model.num_classes} if config.model.num_classes \
        else None
    knobs = dict(num_steps=s.num_steps, cond=cond)
    if sampler.spec.guided:
      knobs["guidance_scale"] = s.guidance_scale
    run = jax.jit(sampler.run)
    k = sampler.knobs(**knobs)
    start = time.perf_counter()
    compiled = run.lower(params, jax.random.key(2), k).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, jax.random.key(2), k))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "bench": "media_sample_cost", "config": args.config, "shape": list(net.sample_shape),
        "params": models.count_params(params), "sampler": s.sampler, "steps": s.num_steps,
        "guided": bool(sampler.spec.guided), "batch": batch, "compile_s": round(compile_s, 2),
        "seconds": round(seconds, 3), "seconds_per_sample": round(seconds / batch, 3),
        "load_average_after": machine.load_average()}), flush=True)


if __name__ == "__main__":
  main()
