r"""The numbers the latent configs' docstrings and the README quote: an autoencoder run's
held-out PSNR, and a latent run's samples judged by a classifier.

  python benchmarks/latent_quality.py --autoencoder=workdirs/digits_ae \
      --latent=workdirs/digits_latent [--num_images=100]

- PSNR: every image of the autoencoder's eval split (`config.autoencoder.eval_split`), encoded
  (posterior mean) and decoded with the EMA params; mean over images of 10 log10(4 / MSE).
- Samples: `--num_images` drawn with the run's saved `config.sample`, labels i % 10, at the
  saved guidance scale and at 0 (unconditional). The judge is a logistic regression fit on
  (up to 20,000 of) the data's training images; reported: its accuracy on the requested labels,
  the classes it sees, and its accuracy on held-out real images (its own ceiling). Until the
  evaluation issue's feature distance lands, this is the quality measure.

Prints one JSON object per run.
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

from configs import common  # pylint: disable=wrong-import-position
from diffax import autoencoder_loss  # pylint: disable=wrong-import-position
from diffax.pipeline import checkpoint  # pylint: disable=wrong-import-position
from diffax.pipeline import data  # pylint: disable=wrong-import-position
from diffax.pipeline import parallel  # pylint: disable=wrong-import-position
from diffax.pipeline import sample  # pylint: disable=wrong-import-position
from diffax.pipeline import tasks  # pylint: disable=wrong-import-position
from diffax.pipeline.workdir import Workdir  # pylint: disable=wrong-import-position


def autoencoder_psnr(path):
  workdir = Workdir(path)
  config = workdir.load_config()
  task = tasks.create(config)
  params, step = checkpoint.load_ema_params(workdir, config, task.init_fn)
  split = config.autoencoder.eval_split
  images = _all_images(config, split)
  params = jax.device_get(params)
  reconstructions = np.concatenate([task.reconstruct(params, images[i:i + 500])
                                    for i in range(0, len(images), 500)])
  psnr = autoencoder_loss.psnr(images, reconstructions)
  return {"autoencoder": path, "step": step, "split": split, "images": len(images),
          "psnr_db": float(np.mean(psnr))}


def _all_images(config, split):
  """Every image of a split (loaded in growing chunks until the split ends)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir)
  total = builder.info.splits[split].num_examples
  return data.load_eval_images(config, total, split=split)["image"]


def judge(config, limit=20_000):
  """A logistic regression on the training images and its held-out accuracy."""
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(config.data.dataset, data_dir=config.data.data_dir)
  n_train = min(limit, builder.info.splits[config.data.split].num_examples)
  train = data.load_eval_images(config, n_train, split=config.data.split)
  test = data.load_eval_images(config, min(2000, builder.info.splits["test"].num_examples),
                               split="test")
  flat = lambda x: x.reshape(len(x), -1)
  clf = linear_model.LogisticRegression(max_iter=300).fit(flat(train["image"]), train["label"])
  return clf, float(np.mean(clf.predict(flat(test["image"])) == test["label"]))


def latent_samples(path, num_images):
  workdir = Workdir(path)
  config = workdir.load_config(defaults=common.base_config())
  mesh = parallel.create_mesh(jax.devices()[:1])
  net, schedule, space = sample.load_model(config, mesh)
  params, step = sample.load_ema_params(workdir, config, net, mesh=mesh)
  clf, real_accuracy = judge(config)
  labels = np.arange(num_images) % 10
  out = {"latent": path, "step": step, "scale_factor": space.scale_factor,
         "latent_shape": list(space.shape), "judge_accuracy_on_real_test_images": real_accuracy,
         "sample": {k: config.sample[k] for k in ("sampler", "num_steps", "spacing")}}
  req = sample.request(config, net, schedule, num_images=num_images,
                       batch_size=min(num_images, 100), mesh=mesh, class_label=-1,
                       latent_space=space)
  for scale in sorted({0.0, float(config.sample.guidance_scale)}):
    knobs = dict(req.knobs, guidance_scale=scale) if req.sampler.spec.guided else req.knobs
    images = dataclasses.replace(req, knobs=knobs)(params, jax.random.key(0))
    predicted = clf.predict(images.reshape(num_images, -1))
    out[f"guidance_{scale:g}"] = {
        "accuracy_on_requested_label": float(np.mean(predicted == labels)),
        "classes_seen": int(len(np.unique(predicted))),
        "class_counts": np.bincount(predicted, minlength=10).tolist()}
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--autoencoder", help="workdir of an autoencoder run")
  parser.add_argument("--latent", help="workdir of a latent diffusion run")
  parser.add_argument("--num_images", type=int, default=100)
  args = parser.parse_args()
  if args.autoencoder:
    print(json.dumps(autoencoder_psnr(args.autoencoder)), flush=True)
  if args.latent:
    print(json.dumps(latent_samples(args.latent, args.num_images)), flush=True)


if __name__ == "__main__":
  main()
