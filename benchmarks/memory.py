"""Memory and scale: the largest train batch that fits a memory budget with and without remat,
and the per-device train-state bytes replicated vs FSDP. Compile-only: nothing is trained.

  python benchmarks/memory.py --out benchmarks/results/DATE_memory.jsonl   # the recorded rows
  python benchmarks/memory.py --quick                                      # a tiny check
  python benchmarks/memory.py --only batch --widths half --budgets_gib 2 --remat none,blocks

One JSON object per line: the machine (benchmarks/machine.py), then

- `{"bench": "memory_batch", ...}`, per (width, budget, remat): the largest global batch whose
  train step (`configs/cifar10_ddpm.py` through `diffax_cases.make_step` and
  `parallel.compile_train_step` on one device, the state donated) fits the budget in XLA's
  compiled memory analysis, bytes = arguments + outputs - aliased (the donated state counted
  once) + temporaries. Found without running anything, by a secant search on the batch
  (`largest_batch`) from two probe batches; every batch compiled is in the record (`tried`),
  the largest that fits and the next, which does not, among them.
- `{"bench": "memory_state", ...}`, per (width, fsdp): the train state (params, EMA params, Adam
  moments) created on N fake CPU devices (`--devices`, set before JAX starts) with
  `parallel.create_sharded_state`, and the bytes of the shards each device holds.

XLA:CPU's buffer assignment does not depend on LLVM's optimisation level, so the step is
compiled with `xla_backend_optimization_level=0` (the same bytes, measured, in ~60 % of the
time; `COMPILER_OPTIONS`).
"""

import argparse
import functools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `benchmarks`, `configs` and `diffax` importable
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from benchmarks import diffax_cases
from benchmarks import machine
from diffax import models
from diffax.pipeline import parallel
from diffax.pipeline import state as train_state

GIB = 2**30
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
FULL = dict(widths=("half", "full"), budgets_gib=(2.0, 8.0), remat=("none", "blocks", "dots"),
            devices=4, probes=(8, 16))
QUICK = dict(widths=("smoke",), budgets_gib=(0.01,), remat=("none", "blocks"), devices=2,
             probes=(2, 4))


def config(width: str, batch: int = 8, remat: str = "none"):
  """The DDPM CIFAR-10 config at `width` ("half", "full", or "smoke": its tiny variant)."""
  from configs import cifar10_ddpm
  cfg = cifar10_ddpm.get_config("smoke") if width == "smoke" else diffax_cases.config(width)
  cfg.train.batch_size = batch
  cfg.model.remat = remat
  return cfg


def step_bytes(cfg, batch: int) -> dict:
  """XLA's memory analysis of `cfg`'s train step at global batch `batch`, compiled (never run)
  on one device from abstract shapes."""
  init_fn, tx, step = diffax_cases.make_step(cfg)
  state = jax.eval_shape(functools.partial(train_state.create_train_state, init_fn, tx),
                         jax.random.key(0))
  size, channels = cfg.data.image_size, cfg.data.channels
  images = {"x": jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)}
  rng = jax.eval_shape(lambda: jax.random.key(0))
  mesh = parallel.create_mesh(jax.devices()[:1])
  lowered = parallel.compile_train_step(step, mesh).lower(state, images, rng)
  m = lowered.compile(COMPILER_OPTIONS).memory_analysis()
  return {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
          "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes,
          "total": (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                    + m.temp_size_in_bytes)}


def largest_batch(bytes_at, budget: int, probes=(8, 16), limit: int = 2**20) -> int:
  """The largest batch b >= 1 with `bytes_at(b) <= budget` (0 if none), for bytes that grow
  with the batch (nearly affinely, as a compiled step's do).

  A secant search: an affine guess through the two measured batches whose bytes are nearest
  the budget, kept strictly between the largest batch known to fit and the smallest known not
  to, until those two are neighbours. Nearly affine bytes take about two compiles per budget
  after the probes (the guess, then its successor).
  """
  known = {}
  for b in probes:
    known[b] = bytes_at(b)
  while True:
    lo = max((b for b in known if known[b] <= budget), default=0)
    hi = min((b for b in known if known[b] > budget), default=limit + 1)
    if hi - lo <= 1 or lo >= limit:
      return lo
    a, b = sorted(sorted(known, key=lambda k: abs(known[k] - budget))[:2])
    slope = (known[b] - known[a]) / (b - a)
    guess = a + (budget - known[a]) // slope if slope > 0 else 2 * max(lo, 1)
    guess = min(max(int(guess), lo + 1), hi - 1)
    known[guess] = bytes_at(guess)


def batch_rows(width: str, budgets_gib, remat: str, probes) -> list:
  """One `memory_batch` record per budget for (width, remat); the compiles are shared."""
  tried = {}

  def bytes_at(batch):
    if batch not in tried:
      start = time.perf_counter()
      tried[batch] = dict(step_bytes(config(width, batch, remat), batch),
                          compile_s=round(time.perf_counter() - start, 1))
    return tried[batch]["total"]

  rows = []
  for budget_gib in budgets_gib:
    best = largest_batch(bytes_at, int(budget_gib * GIB), probes)
    (b0, b1) = probes
    rows.append({
        "bench": "memory_batch", "width": width, "remat": remat, "budget_gib": budget_gib,
        "max_batch": best, "bytes_at_max": tried[best]["total"] if best else None,
        "bytes_per_image": (tried[b1]["total"] - tried[b0]["total"]) / (b1 - b0),
        "tried": {b: tried[b]["total"] for b in sorted(tried)},
        "at_max": tried.get(best), "compiler_options": COMPILER_OPTIONS})
  return rows


def state_row(width: str, fsdp: int, devices) -> dict:
  """The train state of `width` created on `devices` with a 'fsdp' axis of `fsdp`: its bytes
  and the bytes each device holds."""
  cfg = config(width)
  init_fn, tx, _ = diffax_cases.make_step(cfg)
  mesh = parallel.create_mesh(devices, fsdp=fsdp)
  # An "rbg" key: XLA:CPU compiles the initializer ~3x faster than threefry's; same bytes.
  state = parallel.create_sharded_state(
      functools.partial(train_state.create_train_state, init_fn, tx), mesh,
      jax.random.key(0, impl="rbg"))
  per_device = {d: 0 for d in mesh.devices.flat}
  for leaf in jax.tree.leaves(state):
    for shard in leaf.addressable_shards:
      per_device[shard.device] += shard.data.nbytes
  total = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
  return {"bench": "memory_state", "width": width, "devices": len(devices), "fsdp": fsdp,
          "num_params": models.count_params(state.params), "state_bytes": total,
          "per_device_max": max(per_device.values()),
          "per_device_min": min(per_device.values()),
          "fraction": max(per_device.values()) / total}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="a tiny check of every part")
  parser.add_argument("--only", choices=("batch", "state"), help="one part")
  parser.add_argument("--widths", help="comma-separated: half, full (default: both)")
  parser.add_argument("--budgets_gib", help="comma-separated GiB (default: 2,8)")
  parser.add_argument("--remat", help="comma-separated policies (default: none,blocks,dots)")
  parser.add_argument("--devices", type=int, help="fake CPU devices for the state rows (4)")
  parser.add_argument("--out", help="also append the JSON lines to this file")
  args = parser.parse_args()
  grid = dict(QUICK if args.quick else FULL)
  for key, parse in (("widths", str), ("budgets_gib", float), ("remat", str)):
    if getattr(args, key):
      grid[key] = tuple(parse(v) for v in getattr(args, key).split(","))
  grid["devices"] = args.devices or grid["devices"]
  jax.config.update("jax_num_cpu_devices", grid["devices"])  # before JAX starts its backend

  out = open(args.out, "a", encoding="utf-8") if args.out else None

  def emit(record):
    line = json.dumps(record)
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()

  emit(machine.info(REPO))
  if args.only in (None, "batch"):
    for width in grid["widths"]:
      for remat in grid["remat"]:
        for row in batch_rows(width, grid["budgets_gib"], remat, grid["probes"]):
          emit(row)
  if args.only in (None, "state"):
    devices = jax.devices()[:grid["devices"]]
    for width in grid["widths"]:
      for fsdp in (1, len(devices)):
        emit(state_row(width, fsdp, devices))
  emit({"bench": "load_average", "load_average": machine.load_average()})


if __name__ == "__main__":
  main()
