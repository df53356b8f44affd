r"""Seconds per sample of a config's network and sampler on this machine, beside its image peer.

The sampler of `config.sample` (steps, spacing, guidance, which doubles the batch), on random
parameters (the cost does not depend on their values), compiled first, then timed `--reps`
times per batch size (median). With `--peer_image`, the same config as an image model
(`data.kind="image"`: the same U-Net width, depth, attention and sampler on one 2-D frame) is
timed in the same run, alternating with the clip model, so a video model's cost reads as
frames x (cost of one image) x overhead. Prints one JSON line per case after the machine
record (CPU, cores, ISA flags such as avx2 / avx512f from /proc/cpuinfo, load, versions,
commit); `--out FILE` appends the same lines to a file.

  python benchmarks/media_sample_cost.py --config=configs/moving_digits.py --batch 1 20 \
      --peer_image --out benchmarks/results/DATE_video_cost.jsonl
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
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--peer_image", action="store_true",
                      help="also time the config as a 2-D image model of the same width")
  parser.add_argument("--out", help="append the JSON lines to this file too")
  parser.add_argument("--xla_flags", default=machine.RECOMMENDED_XLA_FLAGS)
  args = parser.parse_args()
  machine.prepend_xla_flags(args.xla_flags)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

  def emit(record):
    line = json.dumps(record)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")

  emit(machine.info(repo))
  configs = {"model": load_config(args.config)}
  if args.peer_image:
    peer = load_config(args.config)
    with peer.unlocked():
      peer.data.kind = "image"
    configs["image_peer"] = peer
  for batch in args.batch:
    runs = {name: prepare(config, batch) for name, config in configs.items()}
    times = {name: [] for name in runs}
    for _ in range(args.reps):  # alternating, so drift in the machine's load hits both alike
      for name, (call, _) in runs.items():
        start = time.perf_counter()
        jax.block_until_ready(call())
        times[name].append(time.perf_counter() - start)
    records = {}
    for name, (_, record) in runs.items():
      seconds = float(np.median(times[name]))
      records[name] = dict(record, role=name, batch=batch, seconds=round(seconds, 3),
                           times=[round(x, 3) for x in times[name]],
                           seconds_per_sample=round(seconds / batch, 4))
    if "image_peer" in records:
      model, image = records["model"], records["image_peer"]
      frames = model["shape"][0] if len(model["shape"]) == 4 else 1
      model["frames"] = frames
      model["per_sample_vs_image"] = round(model["seconds"] / image["seconds"], 2)
      model["per_frame_vs_image"] = round(model["seconds"] / image["seconds"] / frames, 2)
      model["gflops_vs_image"] = round(model["gflops"] / image["gflops"], 2)
    for record in records.values():
      emit(dict(record, load_average_after=machine.load_average()))


def prepare(config, batch):
  """(a call running the compiled sampler once, the case's record without times)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from diffax import models  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import build  # pylint: disable=g-import-not-at-top
  net, schedule = build.model(config), build.schedule(config)
  params = jax.jit(net.init_fn)(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.01 * jax.random.normal(jax.random.key(1), p.shape),
                        params)  # zero-initialised layers would make the output trivially 0
  s = config.sample
  sampler = build.sampler(config, net, schedule, batch_size=batch)
  cond = {"label": np.arange(batch) % config.model.num_classes} if config.model.num_classes \
      else None
  knobs = dict(num_steps=s.num_steps, cond=cond)
  if sampler.spec.guided:
    knobs["guidance_scale"] = s.guidance_scale
  k = sampler.knobs(**knobs)
  start = time.perf_counter()
  lowered = jax.jit(sampler.run).lower(params, jax.random.key(2), k)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  call = lambda: compiled(params, jax.random.key(2), k)
  jax.block_until_ready(call())  # warm-up
  # XLA counts a scan's body once: the FLOPs of one step's evaluations, per sample.
  flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
  return call, {
      "bench": "media_sample_cost", "config": config.data.dataset, "kind": config.data.kind,
      "shape": list(net.sample_shape), "params": models.count_params(params),
      "sampler": s.sampler, "steps": s.num_steps, "guided": bool(sampler.spec.guided),
      "compile_s": round(compile_s, 2), "gflops": round(flops / 1e9 / batch, 4)}


if __name__ == "__main__":
  main()
