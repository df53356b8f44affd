"""A/B of XLA flag sets, which are fixed per process: one worker process per flag set, driven
in alternation (ABBA) so drift of the machine's load hits every flag set alike.

  python benchmarks/flags_ab.py --case train:half:32 --reps 5 \
      -- "" "--xla_cpu_experimental_ynn_fusion_type="

Each worker builds the case once (reporting its compile time), then on every "run" line from
the parent times one call and answers with the seconds. Prints one JSON line per flag set.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worker(case: str) -> None:
  sys.path.insert(0, REPO)
  # pylint: disable=g-import-not-at-top
  from benchmarks import diffax_cases
  from benchmarks import timing
  kind, width, batch, *rest = case.split(":")
  if kind == "train":
    fn = diffax_cases.TrainStep(diffax_cases.config(width, int(batch)))
  elif kind == "sample":
    steps = int(rest[0]) if rest else 10
    fn = diffax_cases.Sampler(diffax_cases.config(width), "ddim", int(batch), steps)
  else:
    raise ValueError(f"unknown case kind {kind!r}: train:WIDTH:BATCH or sample:WIDTH:BATCH:STEPS")
  fn()  # warm-up
  print(json.dumps({"ready": True, "compile_s": fn.compile_s}), flush=True)
  for line in sys.stdin:
    if line.strip() != "run":
      break
    print(json.dumps({"seconds": timing.timed(fn)}), flush=True)


def compare(case: str, flag_sets: list[str], reps: int) -> list[dict]:
  """Times `case` under each XLA flag set in its own process, alternating; returns records."""
  workers = []
  for flags in flag_sets:
    env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, __file__, "--worker", case], env=env, cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())  # build one at a time: compiles compete too
    workers.append((flags, proc, ready["compile_s"], []))
  for rep in range(reps):
    for flags, proc, _, times in (workers if rep % 2 == 0 else workers[::-1]):
      proc.stdin.write("run\n")
      proc.stdin.flush()
      times.append(json.loads(proc.stdout.readline())["seconds"])
  records = []
  for flags, proc, compile_s, times in workers:
    proc.stdin.close()
    proc.wait()
    records.append({"bench": "xla_flags", "case": case, "xla_flags": flags,
                    "compile_s": compile_s, "median_s": statistics.median(times),
                    "times_s": [round(t, 4) for t in times]})
  return records


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  parser.add_argument("--case", default="train:half:32",
                      help="train:WIDTH:BATCH or sample:WIDTH:BATCH:STEPS (DDIM)")
  parser.add_argument("flag_sets", nargs="*", metavar="XLA_FLAGS",
                      default=["", "--xla_cpu_experimental_ynn_fusion_type="],
                      help="XLA_FLAGS values to compare (\"\" is XLA's default); put them "
                           "after --, as they start with --")
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  if args.worker:
    _worker(args.worker)
    return
  for record in compare(args.case, args.flag_sets, args.reps):
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
