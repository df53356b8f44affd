"""Peak resident memory of one benchmark case, each side alone in a fresh Python process.

Resident memory is per process, so diffax and its peers cannot share one: for each side
(diffax, diffusers eager, diffusers under torch.compile) a child process imports only its own
framework, builds the case as `run.py` does, calls it once (warm-up: compilation, allocator
caches), resets the kernel's high-water mark (`/proc/self/clear_refs`), calls it again, and
prints one JSON line:
  {"import_mib": RSS after importing the framework,
   "run_mib": peak RSS during the second call (the model, its state and the call's working
     memory: what a long run holds),
   "peak_mib": the process's peak RSS (compilation included; VmHWM)}

A sampler case runs 2 steps: a sampling loop's memory does not grow with its steps.

  python -m benchmarks.peak_rss --side diffax --what train --width half --batch 32
"""

import argparse
import json
import os
import re

from benchmarks import child

SIDES = ("diffax", "peer", "peer_compiled")
SAMPLER_STEPS = 2


def _mib_now(field: str) -> float:
  with open("/proc/self/status") as f:
    return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) / 1024


def _child(args) -> dict:
  if args.side == "diffax":
    from benchmarks import diffax_cases  # pylint: disable=g-import-not-at-top
    import_mib = _mib_now("VmRSS")
    cfg = diffax_cases.config(args.width, args.batch)
    if args.what == "train":
      case = diffax_cases.TrainStep(cfg)
    else:
      case = diffax_cases.Sampler(cfg, args.sampler, args.batch, SAMPLER_STEPS,
                                  count_flops=False)
  else:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import peer  # pylint: disable=g-import-not-at-top
    import_mib = _mib_now("VmRSS")
    torch.set_num_threads(args.torch_threads)
    compiled = args.side == "peer_compiled"
    case = (peer.TrainStep(args.width, args.batch, compiled=compiled) if args.what == "train"
            else peer.Sampler(args.width, args.sampler, args.batch, SAMPLER_STEPS,
                              compiled=compiled))
  case()
  # VmHWM, not getrusage's ru_maxrss: that one keeps the high-water mark of the process before
  # its exec (the parent's, which ran the other side).
  peak_mib = _mib_now("VmHWM")
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak resident set size, to the current one
  case()
  run_mib = _mib_now("VmHWM")
  return {"import_mib": import_mib, "run_mib": run_mib, "peak_mib": max(peak_mib, run_mib)}


def measure(side: str, what: str, width: str, batch: int, sampler: str = "ddim",
            torch_threads: int = 1) -> dict:
  """Runs one side of one case in a child process; returns its JSON record."""
  return child.run("peak_rss", ["--side", side, "--what", what, "--width", width, "--batch",
                                batch, "--sampler", sampler, "--torch_threads", torch_threads],
                   f"peak-memory {side} {what}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--side", choices=SIDES, required=True)
  parser.add_argument("--what", choices=("sampler", "train"), required=True)
  parser.add_argument("--width", default="half")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--sampler", default="ddim")
  parser.add_argument("--torch_threads", type=int, default=os.cpu_count())
  print(json.dumps(_child(parser.parse_args())))


if __name__ == "__main__":
  main()
