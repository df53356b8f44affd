r"""Samples from a trained run: the newest checkpoint's EMA params -> PNG grid + .npz.

  python scripts/sample.py --workdir=workdirs/digits --num_samples=64 --sampler=ddim \
      --num_steps=50 --out=workdirs/digits/samples.png

A class-conditional run (configs/digits_cond.py) takes a label and a guidance scale:

  python scripts/sample.py --workdir=workdirs/digits_cond --class_label=3 --guidance_scale=3

Editing: inpainting keeps the known pixels of --init_image where --mask is nonzero (RePaint's
resampling with --resample=r); SDEdit starts from --init_image noised to --strength:

  python scripts/sample.py --workdir=DIR --init_image=digit.png --mask=top_half.png --resample=5
  python scripts/sample.py --workdir=DIR --init_image=digit.png --strength=0.5

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
import numpy as np
from PIL import Image

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
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Sampler steps (model calls: heun 2n - 1).")
_SPACING = flags.DEFINE_enum("spacing", None, sorted(sampling.SPACINGS),
                             "Which timesteps the steps visit (karras suits dpmpp_2m and heun).")
_ETA = flags.DEFINE_float("eta", None, "DDIM / Euler ancestral eta: 0 deterministic, 1 "
                          "ancestral (default: the sampler's own).")
_CLIP = flags.DEFINE_bool("clip_x0", None, "Clip the x0 estimate to [-1, 1] at each step.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Dynamic thresholding (Imagen) percentile "
                                "in [0, 1), e.g. 0.995; 0 disables it.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w: 0 "
                               "unconditional, 1 conditional, > 1 guided (class-conditional "
                               "runs trained with label dropout).")
_CLASS_LABEL = flags.DEFINE_integer("class_label", None, "The class to draw; -1: image i gets "
                                    "i % num_classes (class-conditional runs).")
_INIT_IMAGE = flags.DEFINE_string("init_image", None, "An image to edit: a PNG, or an .npz with "
                                  "key 'samples' or 'image' ([H, W, C] or [N, H, W, C] in "
                                  "[-1, 1]); must have the model's size.")
_MASK = flags.DEFINE_string("mask", None, "Inpainting: PNG or .npz (like --init_image) whose "
                            "nonzero pixels are known (kept from --init_image).")
_STRENGTH = flags.DEFINE_float("strength", None, "SDEdit with --init_image: noise it to "
                               "t0 = strength * T in (0, 1] and sample from there.")
_RESAMPLE = flags.DEFINE_integer("resample", None, "Inpainting: RePaint's resample count r >= 1 "
                                 "(each step taken r times).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flag_as_required("workdir")


def load_image(path: str, name: str, image_shape, *, mask: bool = False) -> np.ndarray:
  """A PNG (8-bit, mapped to [-1, 1]; a mask as nonzero) or an .npz with key `samples` or
  `image`, as float32 `[N, H, W, C]`; a clear error when it does not have the model's size."""
  if not os.path.exists(path):
    raise app.UsageError(f"--{name}={path}: no such file")
  if path.endswith(".npz"):
    with np.load(path) as npz:
      keys = [k for k in ("samples", "image") if k in npz]
      if not keys:
        raise app.UsageError(f"--{name}={path}: an .npz needs the key 'samples' or 'image', "
                             f"got {sorted(npz.keys())}")
      array = np.asarray(npz[keys[0]], np.float32)
  else:
    pil = Image.open(path)
    pil = pil.convert("L" if image_shape[-1] == 1 else "RGB")
    array = np.asarray(pil, np.float32)
    array = array[..., None] if array.ndim == 2 else array
    if not mask:
      array = array / 127.5 - 1.0  # uint8 [0, 255] -> [-1, 1]
  if array.ndim == len(image_shape) - 1 and image_shape[-1] == 1:
    array = array[..., None]  # [H, W] -> [H, W, 1]
  channels_ok = array.shape[-1] == image_shape[-1] or (mask and array.shape[-1] == 1)
  if array.ndim not in (3, 4) or array.shape[-3:-1] != image_shape[:2] or not channels_ok:
    raise app.UsageError(f"--{name}={path} has shape {array.shape}; the model draws "
                         f"{image_shape[0]}x{image_shape[1]} images with {image_shape[2]} "
                         "channel(s): give [H, W, C] or [N, H, W, C] of that size")
  return array


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 shows it
  try:  # before the checkpoint is read
    generate.check_edits(init_image=bool(_INIT_IMAGE.value), mask=bool(_MASK.value),
                         strength=_STRENGTH.value is not None,
                         resample=_RESAMPLE.value is not None, prefix="--")
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _STRENGTH.value is not None and not 0 < _STRENGTH.value <= 1:
    raise app.UsageError(f"--strength must lie in (0, 1], got {_STRENGTH.value}")
  if _RESAMPLE.value is not None and _RESAMPLE.value < 1:
    raise app.UsageError(f"--resample must be >= 1, got {_RESAMPLE.value}")
  train.enable_compilation_cache()
  parallel.initialize_distributed()
  config = generate.load_config(_WORKDIR.value)
  overrides = {"sampler": _SAMPLER.value, "num_steps": _NUM_STEPS.value, "eta": _ETA.value,
               "spacing": _SPACING.value, "clip_x0": _CLIP.value, "threshold": _THRESHOLD.value,
               "guidance_scale": _GUIDANCE.value, "class_label": _CLASS_LABEL.value,
               "num_images": _NUM_SAMPLES.value, "batch_size": _BATCH_SIZE.value}
  with config.unlocked():
    config.sample.update({k: v for k, v in overrides.items() if v is not None})
    if _NUM_SAMPLES.value is not None and _BATCH_SIZE.value is None:
      config.sample.batch_size = min(config.sample.batch_size, _NUM_SAMPLES.value)
  validation.validate_sampling(config)
  image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
  init_image = mask = None
  if _INIT_IMAGE.value:
    init_image = load_image(_INIT_IMAGE.value, "init_image", image_shape)
  if _MASK.value:
    mask = load_image(_MASK.value, "mask", image_shape, mask=True)

  mesh = parallel.create_mesh()
  config, apply_fn, schedule, params, step = generate.load_run(_WORKDIR.value, mesh=mesh,
                                                               config=config)
  num_images = config.sample.num_images
  labels = None
  if config.model.num_classes:
    labels = generate.class_labels(config, num_images)
  sample_fn = generate.make_sample_fn(apply_fn, schedule, config, mesh=mesh,
                                      batch_size=config.sample.batch_size, labels=labels,
                                      init_image=init_image, mask=mask,
                                      strength=_STRENGTH.value, resample=_RESAMPLE.value)
  logging.info("step %d: %d images, %s (%s), %d steps, eta %s, guidance %s", step, num_images,
               config.sample.sampler, config.sample.spacing, config.sample.num_steps,
               config.sample.eta, config.sample.guidance_scale)
  images = generate.generate(sample_fn, params, num_images, config.sample.batch_size,
                             jax.random.key(_SEED.value))
  if jax.process_index() == 0:
    out = _OUT.value or os.path.join(_WORKDIR.value, "samples.png")
    ncols = (config.model.num_classes  # column k holds the digit k
             if config.model.num_classes and config.sample.class_label == -1 else None)
    png, npz = image_grid.save_samples(out, images, ncols=ncols)
    print(f"wrote {png} and {npz}")


if __name__ == "__main__":
  app.run(main)
