"""Runs the diffax benchmarks side by side with PyTorch diffusers; prints JSON lines and a table.

  python benchmarks/run.py            # everything (tens of minutes on 2 cores)
  python benchmarks/run.py --quick    # a smoke run of every part (about a minute)
  python benchmarks/run.py --only train --train half:32 --reps 5 --out results.jsonl

One JSON object per line on stdout: the machine, the matmul limit, then one record per measured
configuration (diffax and the peer timed in alternating repetitions, their medians, the ratio of
the two, FLOP/s and the fraction of the measured matmul rate), then the markdown table.
See benchmarks/README.md for what is measured and how to read it.
"""

import argparse
import json
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `benchmarks`, `configs` and `diffax` importable
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import compile_time
from benchmarks import diffax_cases
from benchmarks import limit
from benchmarks import machine
from benchmarks import peak_rss
from benchmarks import table
from benchmarks import timing

PARTS = ("limit", "sampler", "train", "compile", "memory")
FULL = dict(
    sample=["ddim:1:50", "ddim:8:20", "ddim:64:10", "ddim:256:2", "ddpm:1:50", "ddpm:64:5"],
    train=["half:32", "half:128", "full:32", "full:128"],
    compile=["sampler:half:64", "train:half:32", "sampler:full:64", "train:full:32"],
    reps=3, matmul_n=2048)
QUICK = dict(sample=["ddim:1:10", "ddpm:4:4"], train=["half:4"], compile=["sampler:half:4"],
             reps=2, matmul_n=1024)

RECOMMENDED_XLA_FLAGS = machine.RECOMMENDED_XLA_FLAGS  # prepended to any XLA_FLAGS already set

# The targets, diffax relative to the peer measured in the same run.
SAMPLE_TARGETS = {1: 2.0, 64: 1.2}
TRAIN_TARGET = 1.2
SMALL_BATCH = 8
SMALL_TRAIN_BATCH = 32
# (what, width) -> (cold, warm) seconds; None: no target.
COMPILE_TARGETS = {("train", "half"): (30.0, 5.0), ("sampler", "half"): (5.0, None)}


def emit(record: dict, records: list, out) -> None:
  records.append(record)
  line = json.dumps(record, sort_keys=False)
  print(line, flush=True)
  if out:
    out.write(line + "\n")
    out.flush()


def _side(times, images_per_call, flops_per_image, limit_flops, steps=None):
  med = timing.median(times)
  images_per_s = images_per_call / med
  side = {"median_s": med, "times_s": [round(t, 4) for t in times],
          "images_per_s": images_per_s}
  if steps:
    side.update(evals_per_s=images_per_s * steps, ms_per_step=1e3 * med / steps)
  if flops_per_image and not math.isnan(flops_per_image):
    gflops = images_per_s * flops_per_image / 1e9
    side.update(gflop_per_image=flops_per_image / 1e9, gflops=gflops,
                frac_matmul=gflops * 1e9 / limit_flops if limit_flops else None)
  return side


def _with_threads(fn, threads: int, default: int):
  def call():
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(threads)
    try:
      return fn()
    finally:
      torch.set_num_threads(default)
  return call


def _share_weights(ours, peers, cfg) -> dict:
  """Gives both samplers the same random weights (diffax's, every one perturbed so no branch
  is a zero-initialised identity), converted by `diffax.interop.unet_to_diffusers` into the
  peer, and checks that one model evaluation agrees: the two sides time the same function."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import peer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  ours.params = jax.tree.map(
      lambda p: jnp.asarray(p + 0.02 * rng.standard_normal(p.shape).astype(np.float32)),
      jax.device_get(ours.params))
  for theirs in peers:
    peer.load_diffax_params(theirs.model, cfg, jax.device_get(ours.params))
  theirs = peers[0]
  x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = np.array([10, 700])
  with torch.inference_mode():
    want = theirs.model(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous(),
                        torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jax.jit(ours.apply_fn)(ours.params, x, t))
  return {"converted": "diffax.interop.unet_to_diffusers",
          "max_rel_err": float(np.abs(got - want).max() / np.abs(want).max())}


def _peer_cases(make, batch: int, small: int, args) -> tuple[dict, list, list]:
  """The peer's timed cases: diffusers eager at each thread count (also 1 thread at batches up
  to `small`, where PyTorch may do better without OpenMP barriers; its faster setting is the
  one compared) and, with --peer_compile, `torch.compile`d at --torch_threads.

  Returns:
    `(cases, peers, threads)`: name -> callable, the peer objects built, the eager threads.
  """
  threads = sorted({args.torch_threads, 1} if batch <= small else {args.torch_threads},
                   reverse=True)
  eager = make(compiled=False)
  cases = {f"peer_{n}t": _with_threads(eager, n, args.torch_threads) for n in threads}
  peers = [eager]
  if args.peer_compile:
    peers.append(make(compiled=True))
    cases["compiled"] = peers[-1]
  return cases, peers, threads


def _interleave(cases: dict, args) -> dict:
  if "compiled" in cases:
    # torch.compile compiles on its first call: outside the warm-up round, whose length sizes
    # the repetitions within --budget_s (inside it, it left one repetition per side).
    cases["compiled"]()
  return timing.interleave(cases, reps=args.reps, warmup=1, budget_s=args.budget_s)


def _peer_sides(record, times, peers, threads, images_per_call, flops_per_image, limit_flops,
                args, steps=None, diffax_per_image=None) -> None:
  """Adds the peers' sides and the ratios to `record`: "ratio" against diffusers eager,
  "ratio_compiled" against torch.compile, "ratio_best" against the faster of the two (what
  the targets compare with)."""
  best = min(threads, key=lambda n: timing.median(times[f"peer_{n}t"]))
  record["peer"] = _side(times[f"peer_{best}t"], images_per_call, flops_per_image, limit_flops,
                         steps)
  record["peer"].update(num_params=peers[0].num_params, channels_last=args.channels_last,
                        torch_threads=best)
  if len(threads) > 1:
    record["peer"]["median_s_by_threads"] = {
        n: timing.median(times[f"peer_{n}t"]) for n in threads}
  ours = diffax_per_image or times["diffax"]
  per_image = (lambda ts: [t / images_per_call for t in ts]) if diffax_per_image else (
      lambda ts: ts)
  record["ratio"] = timing.paired_ratio(per_image(times[f"peer_{best}t"]), ours)
  record["ratio_best"] = record["ratio"]
  if "compiled" in times:
    record["peer_compiled"] = _side(times["compiled"], images_per_call, flops_per_image,
                                    limit_flops, steps)
    record["peer_compiled"]["torch_threads"] = args.torch_threads
    record["ratio_compiled"] = timing.paired_ratio(per_image(times["compiled"]), ours)
    record["ratio_best"] = min(record["ratio"], record["ratio_compiled"])


def bench_sampler(spec: str, args, limit_flops, records, out):
  name, batch, steps = spec.split(":")
  batch, steps = int(batch), int(steps)
  for width in args.widths:
    cfg = diffax_cases.config(width)
    ours = diffax_cases.Sampler(cfg, name, batch, steps)
    cases = {"diffax": ours}
    if args.peer:
      from benchmarks import peer  # pylint: disable=g-import-not-at-top
      make = lambda compiled: peer.Sampler(width, name, batch, steps,  # pylint: disable=cell-var-from-loop
                                           channels_last=args.channels_last, compiled=compiled)
      peer_cases, peers, threads = _peer_cases(make, batch, SMALL_BATCH, args)
      same_weights = _share_weights(ours, peers, cfg)
      cases.update(peer_cases)
    load = machine.load_average()
    times = _interleave(cases, args)
    flops_per_image = ours.flops_per_eval / batch * steps
    record = {"bench": "sampler", "sampler": name, "width": width, "batch": batch,
              "steps": steps, "load_average": load}
    record["diffax"] = _side(times["diffax"], batch, flops_per_image, limit_flops, steps)
    record["diffax"].update(compile_s=ours.compile_s, num_params=ours.num_params)
    if args.peer:
      _peer_sides(record, times, peers, threads, batch, flops_per_image, limit_flops, args,
                  steps)
      record["same_weights"] = same_weights
      if name in ("ddim", "dpmpp_2m") and batch in SAMPLE_TARGETS:
        target = SAMPLE_TARGETS[batch]
        record.update(target=f">= {target}x", met=record["ratio_best"] >= target)
    emit(record, records, out)


def bench_train(spec: str, args, limit_flops, records, out):
  width, batch = spec.split(":")
  batch = int(batch)
  cfg = diffax_cases.config(width, batch)
  ours = diffax_cases.TrainStep(cfg, steps_per_call=args.steps_per_call)
  cases = {"diffax": ours}
  if args.peer:
    from benchmarks import peer  # pylint: disable=g-import-not-at-top
    make = lambda compiled: peer.TrainStep(width, batch, channels_last=args.channels_last,
                                           compiled=compiled)
    peer_cases, peers, threads = _peer_cases(make, batch, SMALL_TRAIN_BATCH, args)
    cases.update(peer_cases)
  load = machine.load_average()
  times = _interleave(cases, args)
  flops_per_image = ours.flops / ours.images_per_call
  record = {"bench": "train", "width": width, "batch": batch, "load_average": load}
  record["diffax"] = _side(times["diffax"], ours.images_per_call, flops_per_image, limit_flops)
  record["diffax"].update(compile_s=ours.compile_s, num_params=ours.num_params,
                          steps_per_call=args.steps_per_call)
  if args.peer:
    # Per image, so a diffax call of several scanned steps compares with one peer step.
    _peer_sides(record, times, peers, threads, batch, flops_per_image, limit_flops, args,
                diffax_per_image=[t / ours.images_per_call for t in times["diffax"]])
    record.update(target=f">= {TRAIN_TARGET}x", met=record["ratio_best"] >= TRAIN_TARGET)
  emit(record, records, out)


def bench_compile(spec: str, args, records, out):
  what, width, batch = spec.split(":")
  result = compile_time.cold_and_warm(what, width, int(batch), steps=50)
  record = {"bench": "compile", "what": what, "width": width, "batch": int(batch),
            "cold_s": result["cold"]["total_s"], "warm_s": result["warm"]["total_s"],
            "cold": result["cold"], "warm": result["warm"], "load_average": machine.load_average()}
  if what == "train":  # beside it, the step traced in every process (the persistent cache alone)
    record["traced"] = compile_time.cold_and_warm(what, width, int(batch), traced=True)
  if (what, width) in COMPILE_TARGETS:
    cold, warm = COMPILE_TARGETS[what, width]
    record.update(target=f"<= {cold:g} s cold" + (f", <= {warm:g} s warm" if warm else ""),
                  met=record["cold_s"] <= cold and (warm is None or record["warm_s"] <= warm))
  emit(record, records, out)


def bench_memory(what: str, spec: str, args, records, out):
  """Peak resident memory of one sampler or train case, each side in its own process."""
  if what == "sampler":
    name, batch, _ = spec.split(":")
    widths = args.widths
  else:
    name, (width, batch) = None, spec.split(":")
    widths = [width]
  sides = ["diffax"] + (["peer"] if args.peer else []) + (
      ["peer_compiled"] if args.peer and args.peer_compile else [])
  for width in widths:
    record = {"bench": "memory", "what": what, "width": width, "batch": int(batch),
              "load_average": machine.load_average()}
    if name:
      record.update(sampler=name, steps=peak_rss.SAMPLER_STEPS)
    for side in sides:
      record[side] = peak_rss.measure(side, what, width, int(batch), sampler=name or "ddim",
                                      torch_threads=args.torch_threads)
    emit(record, records, out)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="a short smoke run of every part")
  parser.add_argument("--only", default=",".join(PARTS),
                      help=f"comma-separated parts to run, of {PARTS}")
  parser.add_argument("--sample", nargs="*", help="sampler:batch:steps cases")
  parser.add_argument("--train", nargs="*", help="width:batch cases (width half or full)")
  parser.add_argument("--compile", nargs="*", help="sampler|train:width:batch cases")
  parser.add_argument("--widths", default="half", help="sampler network widths: half,full")
  parser.add_argument("--reps", type=int, help="timed repetitions per case (after 1 warm-up)")
  parser.add_argument("--budget_s", type=float, default=300.0,
                      help="fewer repetitions (at least 1) for a case whose rounds take longer "
                           "than this in total")
  parser.add_argument("--no_peer", dest="peer", action="store_false",
                      help="skip PyTorch diffusers")
  parser.add_argument("--no_peer_compile", dest="peer_compile", action="store_false",
                      help="skip the second peer, diffusers under torch.compile (inductor)")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count(),
                      help="torch.set_num_threads (default: all cores, as XLA uses)")
  parser.add_argument("--channels_last", action="store_true",
                      help="run the peer in NHWC (channels_last) memory format")
  parser.add_argument("--steps_per_call", type=int, default=1,
                      help="diffax train steps per dispatch (lax.scan); 1 is the library's")
  parser.add_argument("--xla_flags", default=RECOMMENDED_XLA_FLAGS,
                      help="XLA_FLAGS for this run (\"\" for XLA's defaults); see README")
  parser.add_argument("--matmul_n", type=int, help="size of the square matmul of the limit")
  parser.add_argument("--out", help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  defaults = QUICK if args.quick else FULL
  for key in ("sample", "train", "compile", "reps", "matmul_n"):
    if getattr(args, key) is None:
      setattr(args, key, defaults[key])
  args.only = [p for p in args.only.split(",") if p]
  unknown = sorted(set(args.only) - set(PARTS))
  if unknown:
    parser.error(f"--only: unknown parts {unknown}; choose from {PARTS}")
  args.widths = [w for w in args.widths.split(",") if w]
  return args


def main(argv=None):
  args = parse_args(argv)
  # Read when JAX first touches its backend, which nothing has done yet.
  machine.prepend_xla_flags(args.xla_flags)
  if args.peer:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(args.torch_threads)
    except ImportError:
      print("# PyTorch/diffusers not installed (pip install -e '.[bench]'): no peer",
            file=sys.stderr)
      args.peer = False
  records = []
  out = open(args.out, "a") if args.out else None  # pylint: disable=consider-using-with
  try:
    emit(machine.info(REPO), records, out)
    limit_flops = None
    if "limit" in args.only or "sampler" in args.only or "train" in args.only:
      jax_rate = limit.jax_matmul_rate(args.matmul_n)
      torch_rate = limit.torch_matmul_rate(args.matmul_n) if args.peer else None
      limit_flops = max(jax_rate, torch_rate or 0.0)
      emit({"bench": "limit", "n": args.matmul_n, "jax_gflops": jax_rate / 1e9,
            "torch_gflops": torch_rate / 1e9 if torch_rate else None,
            "limit_gflops": limit_flops / 1e9}, records, out)
    if "sampler" in args.only:
      for spec in args.sample:
        bench_sampler(spec, args, limit_flops, records, out)
    if "train" in args.only:
      for spec in args.train:
        bench_train(spec, args, limit_flops, records, out)
    if "compile" in args.only:
      for spec in args.compile:
        bench_compile(spec, args, records, out)
    if "memory" in args.only:
      for spec in args.sample:
        bench_memory("sampler", spec, args, records, out)
      for spec in args.train:
        bench_memory("train", spec, args, records, out)
    end = {"bench": "end", "load_average": machine.load_average()}
    if limit_flops:
      # The matmul rate again: under shifting load the start alone can under-state the limit.
      end.update(jax_gflops=limit.jax_matmul_rate(args.matmul_n) / 1e9,
                 torch_gflops=(limit.torch_matmul_rate(args.matmul_n) / 1e9
                               if args.peer else None))
    emit(end, records, out)
  finally:
    if out:
      out.close()
  print()
  print(table.markdown(records))
  return records


if __name__ == "__main__":
  main()
