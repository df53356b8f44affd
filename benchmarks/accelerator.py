"""The DDPM paper's CIFAR-10 network on an accelerator: training MFU and sampling wall time.

  python benchmarks/accelerator.py --out benchmarks/results/DATE_h100.jsonl

On a GPU or TPU it measures, on one device, with the 35.7M-parameter network of
configs/cifar10_ddpm.py:
- the train step at batch 128 in float32 and bfloat16 compute: images/s and MFU, XLA's FLOP
  count of the step over its median time, against the chip's peak (bf16 dense peak for both:
  the fp32 figure shows what TF32/bf16 units leave unused);
- 256 samples x 1000 DDPM steps, wall time (the paper: 17 s on a TPU v3-8);
- DDIM-50 at batch 1 and 256: ms per step and images/s.
Goals on an H100/H200 (issue 17): >= 40 % bf16 MFU in training, 256 x 1000-step samples in
<= 2 s. One JSON object per measurement on stdout (and --out), each with the device name.
`--smoke` runs every part on the tiny `smoke` network in seconds (what the tests run on CPU).
"""

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from benchmarks import diffax_cases
from benchmarks import machine
from benchmarks import timing
from configs import cifar10_ddpm

# Dense bf16 peak TFLOP/s per chip, by a substring of `jax.devices()[0].device_kind` (vendor
# data sheets; SXM parts). --peak_tflops overrides it.
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0,
    "TPU v6": 918.0, "TPU v5p": 459.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
    "TPU v4": 275.0, "TPU v3": 123.0,
}


def peak_tflops(device_kind: str, override=None):
  if override:
    return float(override)
  for name, peak in PEAK_BF16_TFLOPS.items():
    if name.lower() in device_kind.lower():
      return peak
  return None


def config(smoke: bool, batch: int):
  cfg = cifar10_ddpm.get_config("smoke" if smoke else None)
  cfg.train.batch_size = batch
  return cfg


def train(cfg, dtype: str, reps: int, peak):
  case = diffax_cases.TrainStep(cfg, dtype=dtype)
  times = timing.interleave({"step": case}, reps=reps)["step"]
  seconds = timing.median(times)
  flop_rate = case.flops / seconds
  return {"bench": "train", "dtype": dtype, "batch": cfg.train.batch_size,
          "params": case.num_params, "images_per_s": case.images_per_call / seconds,
          "step_ms": 1e3 * seconds, "tflops": flop_rate / 1e12,
          "mfu": flop_rate / (peak * 1e12) if peak else None, "compile_s": case.compile_s}


def sample(cfg, sampler: str, batch: int, steps: int, reps: int):
  case = diffax_cases.Sampler(cfg, sampler, batch, steps)
  seconds = timing.median(timing.interleave({"run": case}, reps=reps)["run"])
  return {"bench": "sample", "sampler": sampler, "batch": batch, "steps": steps,
          "seconds": seconds, "ms_per_step": 1e3 * seconds / steps,
          "images_per_s": batch / seconds, "compile_s": case.compile_s}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="tiny network, seconds (CPU test)")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the chip's dense bf16 peak, if not in PEAK_BF16_TFLOPS")
  parser.add_argument("--out", default=None, help="also append the JSON lines here")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind, args.peak_tflops)
  scale = dict(train_batch=4, samples=4, ddpm_steps=3, ddim_steps=2) if args.smoke else dict(
      train_batch=128, samples=256, ddpm_steps=1000, ddim_steps=50)
  header = {**machine.info(REPO), "bench": "device", "platform": device.platform,
            "device": device.device_kind, "devices": jax.device_count(),
            "peak_bf16_tflops": peak, "smoke": args.smoke}
  records = [header]
  for dtype in ("float32", "bfloat16"):
    records.append(train(config(args.smoke, scale["train_batch"]), dtype, args.reps, peak))
  cfg = config(args.smoke, scale["train_batch"])
  records.append(sample(cfg, "ddpm", scale["samples"], scale["ddpm_steps"], args.reps))
  for batch in (1, scale["samples"]):
    records.append(sample(cfg, "ddim", batch, scale["ddim_steps"], args.reps))
  out = open(args.out, "a", encoding="utf-8") if args.out else None
  for record in records:
    line = json.dumps(dict(record, device=device.device_kind))
    print(line, flush=True)
    if out:
      out.write(line + "\n")
  if out:
    out.close()
  return records


if __name__ == "__main__":
  main()
