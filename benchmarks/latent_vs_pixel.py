r"""Cost per sample of latent vs pixel diffusion at comparable quality, on this machine.

Two trained class-conditional runs, e.g. the pixel model of configs/digits_cond.py and the latent
model of configs/digits_latent.py (same U-Net recipe, same sampler settings), draw the same
request: `--num_images` images, labels i % 10, their saved `config.sample` (the latent run's
sampler settings are set to the pixel run's). Quality: a logistic regression fit on all 1,797
real digits (the tests' judge) reads each image; reported are its accuracy on the requested
labels and its mean top probability. Cost: one untimed draw each (compilation), then `--reps`
timed draws in ABBA order (`timing.interleave`); the latent draw includes decoding. The
decoder alone is timed too.

  python benchmarks/latent_vs_pixel.py --pixel=workdirs/digits_cond \
      --latent=workdirs/digits_latent --out=benchmarks/results/latent_vs_pixel.jsonl

Prints JSON lines (the machine, with its ISA flags, then one record) and appends them to --out.
"""

import argparse
import dataclasses
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from benchmarks import machine  # pylint: disable=wrong-import-position
from benchmarks import timing  # pylint: disable=wrong-import-position
from configs import common  # pylint: disable=wrong-import-position
from diffax.pipeline import parallel  # pylint: disable=wrong-import-position
from diffax.pipeline import sample  # pylint: disable=wrong-import-position
from diffax.pipeline.workdir import Workdir  # pylint: disable=wrong-import-position

SAMPLE_FIELDS = ("sampler", "num_steps", "spacing", "guidance_scale", "eta", "clip_x0",
                 "threshold")


def digit_judge():
  """The tests' judge: a logistic regression on scikit-learn's 1,797 digits in [-1, 1]."""
  from sklearn import datasets, linear_model  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)) / 127.5 - 1.0
  return linear_model.LogisticRegression(max_iter=2000).fit(
      images.reshape(len(images), -1), digits.target)


def prepare(path, num_images, mesh, sample_settings=None):
  """(request, EMA params, config) of the run in `path`, drawing `num_images` in one batch."""
  workdir = Workdir(path)
  config = workdir.load_config(defaults=common.base_config())
  if sample_settings:
    with config.unlocked():
      config.sample.update(sample_settings)
  net, schedule, space = sample.load_model(config, mesh)
  params, step = sample.load_ema_params(workdir, config, net, mesh=mesh)
  req = sample.request(config, net, schedule, num_images=num_images, batch_size=num_images,
                       mesh=mesh, class_label=-1, latent_space=space)
  return req, params, config, step


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pixel", required=True, help="workdir of a pixel-space run")
  parser.add_argument("--latent", required=True, help="workdir of a latent run")
  parser.add_argument("--num_images", type=int, default=100)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", default=None, help="append the JSON lines to this file")
  args = parser.parse_args()

  mesh = parallel.create_mesh(jax.devices()[:1])
  pixel, pixel_params, pixel_config, pixel_step = prepare(args.pixel, args.num_images, mesh)
  settings = {k: pixel_config.sample[k] for k in SAMPLE_FIELDS}
  settings["clip_x0"] = False  # a latent sampler never clips (checks.check_latent_sampling)
  settings["threshold"] = 0.0
  latent, latent_params, _, latent_step = prepare(args.latent, args.num_images, mesh, settings)
  space = latent.latent_space
  rng = jax.random.key(0)
  judge = digit_judge()
  labels = np.arange(args.num_images) % 10
  records = {}
  draws = {"pixel": lambda: pixel(pixel_params, rng),
           "latent": lambda: latent(latent_params, rng)}
  latents = latent.draw(latent_params, rng).latents
  draws["decode"] = lambda: jax.block_until_ready(space.decode(latents))
  times = timing.interleave(draws, reps=args.reps, warmup=1)
  for name, path, step, req in (("pixel", args.pixel, pixel_step, pixel),
                                ("latent", args.latent, latent_step, latent)):
    images = draws[name]().reshape(args.num_images, -1)
    probs = judge.predict_proba(images)
    seconds = timing.median(times[name])
    records[name] = {
        "workdir": os.path.abspath(path), "step": step, "sample_shape": list(req.sampler.spec.shape[1:]),
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "mean_top_probability": float(probs.max(1).mean()),
        "classes_seen": int(len(np.unique(probs.argmax(1)))),
        "median_s": seconds, "times_s": [round(t, 4) for t in times[name]],
        "ms_per_image": 1000 * seconds / args.num_images,
    }
  records["latent"]["decode_median_s"] = timing.median(times["decode"])
  records["latent"]["scale_factor"] = space.scale_factor
  records["latent"]["autoencoder_factor"] = space.factor
  record = {"bench": "latent_vs_pixel", "num_images": args.num_images, "reps": args.reps,
            "sample": {k: settings[k] for k in ("sampler", "num_steps", "spacing",
                                                "guidance_scale")},
            "load_average": machine.load_average(), **records,
            "pixel_over_latent_time": timing.paired_ratio(times["pixel"], times["latent"])}
  lines = [json.dumps(machine.info(REPO)), json.dumps(record)]
  print("\n".join(lines))
  if args.out:
    with open(args.out, "a", encoding="utf-8") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
