r"""Samples from a trained run: the newest checkpoint's EMA params -> PNG grid + .npz.

  python scripts/sample.py --workdir=workdirs/digits --num_samples=64 --sampler=ddim \
      --num_steps=50 --out=workdirs/digits/samples.png

Reads the config the run saved in --workdir; flags left unset take its `sample` settings.
The .npz beside --out holds `samples`: float32 in [-1, 1], [N, H, W, C].
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax

from diffax import generate
from diffax import image_grid
from diffax import parallel
from diffax import sampling
from diffax import train
from diffax import validation

_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by scripts/train.py.")
_OUT = flags.DEFINE_string("out", None, "PNG path (default: <workdir>/samples.png); the "
                           ".npz goes beside it.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Images to draw (default: config).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per sampler call.")
_SAMPLER = flags.DEFINE_enum("sampler", None, sorted(sampling.SAMPLERS), "Sampler.")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps (evenly spaced subset).")
_ETA = flags.DEFINE_float("eta", None, "DDIM eta: 0 deterministic, 1 ancestral-like.")
_CLIP = flags.DEFINE_bool("clip_x0", None, "Clip the x0 estimate to [-1, 1] at each step.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it
  train.enable_compilation_cache()
  parallel.initialize_distributed()
  config = generate.load_config(_WORKDIR.value)
  overrides = {"sampler": _SAMPLER.value, "num_steps": _NUM_STEPS.value, "eta": _ETA.value,
               "clip_x0": _CLIP.value, "num_images": _NUM_SAMPLES.value,
               "batch_size": _BATCH_SIZE.value}
  with config.unlocked():
    config.sample.update({k: v for k, v in overrides.items() if v is not None})
    if _NUM_SAMPLES.value is not None and _BATCH_SIZE.value is None:
      config.sample.batch_size = min(config.sample.batch_size, _NUM_SAMPLES.value)
  validation.validate_sampling(config)

  mesh = parallel.create_mesh()
  config, apply_fn, schedule, params, step = generate.load_run(_WORKDIR.value, mesh=mesh,
                                                               config=config)
  sample_fn = generate.make_sample_fn(apply_fn, schedule, config, mesh=mesh,
                                      batch_size=config.sample.batch_size)
  logging.info("step %d: %d images, %s, %d steps, eta %s", step, config.sample.num_images,
               config.sample.sampler, config.sample.num_steps, config.sample.eta)
  images = generate.generate(sample_fn, params, config.sample.num_images,
                             config.sample.batch_size, jax.random.key(_SEED.value))
  if jax.process_index() == 0:
    out = _OUT.value or os.path.join(_WORKDIR.value, "samples.png")
    png, npz = image_grid.save_samples(out, images)
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
  app.run(main)
