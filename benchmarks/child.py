"""Benchmarks that need a fresh Python process per measurement (compile times, resident memory)
run `python -m benchmarks.<module> ...` children that print one JSON line."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(module: str, args: list, what: str) -> dict:
  """Runs `python -m benchmarks.<module> <args>` from the repository; returns the last line of
  its stdout as JSON, or raises with the end of its stderr."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
  out = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *map(str, args)], cwd=REPO,
                       env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"{what} child failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])
