"""One-off A/B experiments behind benchmarks/README.md's "what was tried" table.

Each experiment times two variants in alternating repetitions in one process and prints one
JSON line with both medians and their ratio. XLA flag experiments need a process per flag set:
see flags_ab.py.

  python benchmarks/experiments.py ynn scan_steps bf16 baked_params peer_layout
"""

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from benchmarks import diffax_cases
from benchmarks import machine
from benchmarks import timing


def _report(name, what, times, per_call_units, note=""):
  a, b = list(times)
  record = {"bench": "experiment", "name": name, "what": what, "load_average":
            machine.load_average(), "note": note}
  for key in (a, b):
    record[key] = {"median_s": timing.median(times[key]), "per_unit_s":
                   timing.median(times[key]) / per_call_units[key],
                   "times_s": [round(t, 4) for t in times[key]]}
  record["speedup_b_over_a"] = timing.paired_ratio(
      [t / per_call_units[a] for t in times[a]], [t / per_call_units[b] for t in times[b]])
  print(json.dumps(record), flush=True)
  return record


def scan_steps(reps):
  """Several train steps per dispatch (lax.scan) vs one: time per image."""
  batch = 8
  cfg = diffax_cases.config("half", batch)
  one = diffax_cases.TrainStep(cfg)
  four = diffax_cases.TrainStep(cfg, steps_per_call=4)
  times = timing.interleave({"1 step/call": one, "4 steps/call": four}, reps=reps)
  return _report("scan_steps", f"train half batch {batch}", times,
                 {"1 step/call": batch, "4 steps/call": 4 * batch},
                 note=f"compile {one.compile_s:.1f} s vs {four.compile_s:.1f} s")


def bf16(reps):
  """bfloat16 compute (params f32) vs float32, DDIM sampling at batch 8."""
  cfg = diffax_cases.config("half")
  f32 = diffax_cases.Sampler(cfg, "ddim", 8, 5)
  b16 = diffax_cases.Sampler(cfg, "ddim", 8, 5, dtype="bfloat16")
  times = timing.interleave({"float32": f32, "bfloat16": b16}, reps=reps)
  return _report("bf16", "sample ddim-5 half batch 8", times, {"float32": 1, "bfloat16": 1})


def baked_params(reps):
  """Params closed over (XLA constants) vs traced through a Partial: compile time and speed."""
  from diffax import models, sampling, schedules
  cfg = diffax_cases.config("half")
  traced = diffax_cases.Sampler(cfg, "ddim", 1, 10)
  init_fn, apply_fn = models.create(cfg)
  params = jax.jit(init_fn)(jax.random.key(0))
  schedule = schedules.from_config(cfg.diffusion)
  model_fn = lambda x, t: apply_fn(params, x, t)
  run = jax.jit(lambda rng: sampling.sample(model_fn, schedule, (1, 32, 32, 3), rng,
                                            sampler="ddim", num_steps=10, clip_x0=True))
  start = time.perf_counter()
  baked = run.lower(jax.random.key(1)).compile()
  baked_compile = time.perf_counter() - start
  times = timing.interleave(
      {"traced (Partial)": traced,
       "baked constants": lambda: baked(jax.random.key(1)).block_until_ready()}, reps=reps)
  return _report("baked_params", "sample ddim-10 half batch 1", times,
                 {"traced (Partial)": 1, "baked constants": 1},
                 note=f"compile {traced.compile_s:.1f} s traced vs {baked_compile:.1f} s baked")


def peer_layout(reps):
  """The peer in NCHW (PyTorch's default) vs channels_last, train batch 32 and sample batch 8."""
  import torch
  from benchmarks import peer
  torch.set_num_threads(os.cpu_count())
  out = []
  times = timing.interleave({"NCHW": peer.TrainStep("half", 32),
                             "channels_last": peer.TrainStep("half", 32, channels_last=True)},
                            reps=reps)
  out.append(_report("peer_layout", "peer train half batch 32", times,
                     {"NCHW": 32, "channels_last": 32}))
  times = timing.interleave(
      {"NCHW": peer.Sampler("half", "ddim", 8, 5),
       "channels_last": peer.Sampler("half", "ddim", 8, 5, channels_last=True)}, reps=reps)
  out.append(_report("peer_layout", "peer sample ddim-5 half batch 8", times,
                     {"NCHW": 8, "channels_last": 8}))
  return out


def ynn(reps):
  """XLA:CPU's YNNPACK convolution fusions (its default) vs XLA's Eigen convolutions, per
  program through compiler options: train half batch 32, DDIM at batch 1 and 64."""
  out = []
  no_ynn = diffax_cases.NO_YNN
  cfg = diffax_cases.config("half", 32)
  a, b = diffax_cases.TrainStep(cfg), diffax_cases.TrainStep(cfg, compiler_options=no_ynn)
  times = timing.interleave({"YNN (default)": a, "no YNN": b}, reps=reps)
  out.append(_report("ynn", "train half batch 32", times, {"YNN (default)": 32, "no YNN": 32},
                     note=f"compile {a.compile_s:.1f} s vs {b.compile_s:.1f} s"))
  for batch, steps in ((1, 10), (64, 2)):
    cfg = diffax_cases.config("half")
    a = diffax_cases.Sampler(cfg, "ddim", batch, steps)
    b = diffax_cases.Sampler(cfg, "ddim", batch, steps, compiler_options=no_ynn)
    times = timing.interleave({"YNN (default)": a, "no YNN": b}, reps=reps)
    out.append(_report("ynn", f"sample ddim-{steps} half batch {batch}", times,
                       {"YNN (default)": batch, "no YNN": batch},
                       note=f"compile {a.compile_s:.1f} s vs {b.compile_s:.1f} s"))
  return out


EXPERIMENTS = {"ynn": ynn, "scan_steps": scan_steps, "bf16": bf16, "baked_params": baked_params,
               "peer_layout": peer_layout}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="*", default=list(EXPERIMENTS),
                      help=f"experiments to run, of {sorted(EXPERIMENTS)}")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--xla_flags", default="",
                      help="XLA_FLAGS for the process (default: XLA's own; the ynn experiment "
                           "sets its option per program)")
  args = parser.parse_args()
  flags = args.xla_flags
  if flags:
    os.environ["XLA_FLAGS"] = " ".join(f for f in (flags, os.environ.get("XLA_FLAGS", "")) if f)
  print(json.dumps(machine.info(REPO)), flush=True)
  for name in args.names:
    EXPERIMENTS[name](args.reps)


if __name__ == "__main__":
  main()
