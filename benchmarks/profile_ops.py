"""Where the time of a compiled diffax program goes: XLA's own ops, from the JAX profiler.

  python benchmarks/profile_ops.py --case train:half:32
  python benchmarks/profile_ops.py --case sampler:half:1 --top 20

Runs the case under `jax.profiler` (a Perfetto trace), sums the duration of every XLA op
(fusion, convolution, dot, copy, ...) over the profiled calls, and prints one JSON line per op
kind (the op name without its numeric suffix) and then the costliest single ops, with the
HLO op_name (the JAX source of the op) where the compiled module names one. The sums are
thread time: with several threads they can exceed the wall time, and ops that hand their work
to another thread pool (Eigen's convolutions) show only their dispatch.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from benchmarks import diffax_cases
from benchmarks import machine

_RUNTIME_EVENTS = ("$", "ThunkExecutor", "PjitFunction", "CommonPjRt", "ParseArguments")


def build(case: str):
  """`sampler:width:batch` (DDIM, 10 steps) or `train:width:batch` -> (callable, compiled)."""
  what, width, batch = case.split(":")
  if what == "sampler":
    s = diffax_cases.Sampler(diffax_cases.config(width), "ddim", int(batch), 10)
    return s, s.compiled
  if what == "train":
    t = diffax_cases.TrainStep(diffax_cases.config(width, int(batch)))
    return t, t.compiled
  raise ValueError(f"case {case!r}: expected sampler|train:width:batch")


def op_times(fn, calls: int) -> dict[str, float]:
  """Microseconds per call of every XLA op seen while running `fn` `calls` times."""
  fn(), fn()  # compile caches warm, buffers allocated
  with tempfile.TemporaryDirectory() as log_dir:
    jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
    for _ in range(calls):
      fn()
    jax.profiler.stop_trace()
    path, = glob.glob(os.path.join(log_dir, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  totals = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME_EVENTS):
      totals[e["name"]] += e["dur"] / calls
  return dict(totals)


def op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the op_name metadata (JAX's name stack) of its root."""
  sources = {}
  for m in re.finditer(r"%([\w.\-]+) = [^\n]*?op_name=\"([^\"]+)\"", hlo_text):
    sources.setdefault(m.group(1), m.group(2))
  return sources


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--case", default="train:half:32")
  parser.add_argument("--calls", type=int, default=2, help="profiled calls (after 2 warm-ups)")
  parser.add_argument("--top", type=int, default=15, help="how many op kinds and ops to print")
  parser.add_argument("--xla_flags", default=machine.RECOMMENDED_XLA_FLAGS)
  args = parser.parse_args()
  machine.prepend_xla_flags(args.xla_flags)
  fn, compiled = build(args.case)
  times = op_times(fn, args.calls)
  total = sum(times.values())
  kinds, counts = collections.Counter(), collections.Counter()
  for name, us in times.items():
    kind = re.sub(r"\.\d+$", "", name)
    kinds[kind] += us
    counts[kind] += 1
  print(json.dumps({"bench": "profile", "case": args.case, "op_time_ms": total / 1e3,
                    "distinct_ops": len(times)}))
  for kind, us in kinds.most_common(args.top):
    print(json.dumps({"kind": kind, "ms": round(us / 1e3, 2),
                      "share": round(us / total, 4), "ops": counts[kind]}))
  sources = op_sources(compiled.as_text())
  for name, us in collections.Counter(times).most_common(args.top):
    print(json.dumps({"op": name, "ms": round(us / 1e3, 2), "source": sources.get(name, "")}))


if __name__ == "__main__":
  main()
