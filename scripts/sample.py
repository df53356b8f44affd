r"""Samples from a trained run: the newest checkpoint's EMA params -> PNG grid + .npz (and an
animated GIF for a video run, WAV files for an audio run).

  python scripts/sample.py --workdir=workdirs/digits --num_samples=64 --sampler=ddim \
      --num_steps=50 --out=workdirs/digits/samples.png

A class-conditional run (configs/digits_cond.py) takes a label and a guidance scale:

  python scripts/sample.py --workdir=workdirs/digits_cond --class_label=3 --guidance_scale=3

Editing: inpainting keeps the known pixels of --init_image where --mask is nonzero (RePaint's
resampling with --resample=r); SDEdit starts from --init_image noised to --strength:

  python scripts/sample.py --workdir=DIR --init_image=digit.png --mask=top_half.png --resample=5
  python scripts/sample.py --workdir=DIR --init_image=digit.png --strength=0.5

Video and audio runs edit the same way; --known_frames and --known_samples say which part of
--init_image (a GIF or .npz clip; a WAV or .npz clip) is kept, instead of a --mask file:

  python scripts/sample.py --workdir=DIR --init_image=clip.npz --known_frames=0-3   # predict
  python scripts/sample.py --workdir=DIR --init_image=clip.gif --known_frames=0,7   # interpolate
  python scripts/sample.py --workdir=DIR --init_image=note.wav --known_samples=:600,1000:  # infill

A latent diffusion run (configs/digits_latent.py) samples latents and decodes them with its
autoencoder; editing works in latent space (the mask is downsampled to the latent grid, and
known pixels come back as the autoencoder's reconstruction of --init_image, not exactly).

Reads the config the run saved in --workdir; flags left unset take its `sample` settings.
Image i depends on --seed and i alone (not on --batch_size or the number of devices).
The .npz beside --out holds `samples`: float32 in [-1, 1], [N, H, W, C] ([N, T, H, W, C] for
video, [N, L, C] for audio; pixels also for a latent model, and with --save_latents its
`latents`, [N, h, w, z], scaled).
A bad flag or workdir is one line on stderr and exit status 1 (--debug shows the traceback).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from configs import common
from diffax import sampling
from diffax.pipeline import build
from diffax.pipeline import cli
from diffax.pipeline import compilation_cache
from diffax.pipeline import masks
from diffax.pipeline import media
from diffax.pipeline import parallel
from diffax.pipeline import sample
from diffax.pipeline.workdir import Workdir

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
                                "in (0, 1], e.g. 0.995; 0 disables it.")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w: 0 "
                               "unconditional, 1 conditional, > 1 guided (conditional runs "
                               "trained with condition dropout).")
_CLASS_LABEL = flags.DEFINE_integer("class_label", None, "The class to draw; -1: image i gets "
                                    "i % num_classes (class-conditional runs).")
_INIT_IMAGE = flags.DEFINE_string("init_image", None, "An example to edit: a PNG image (a GIF "
                                  "clip for video, a WAV clip for audio), or an .npz with key "
                                  "'samples' or 'image' ([*shape] or [N, *shape] in [-1, 1]); "
                                  "must have the model's size (a WAV is cut or zero-padded).")
_MASK = flags.DEFINE_string("mask", None, "Inpainting: PNG or .npz (like --init_image) whose "
                            "nonzero pixels are known (kept from --init_image).")
_KNOWN_FRAMES = flags.DEFINE_string("known_frames", None, "Video inpainting: the frames of "
                                    "--init_image to keep, e.g. 0-3 (predict the rest) or 0,7 "
                                    "(interpolate); instead of --mask.")
_KNOWN_SAMPLES = flags.DEFINE_string("known_samples", None, "Audio inpainting: the samples of "
                                     "--init_image to keep, as slices start:end joined by "
                                     "commas, e.g. :600,1000: (fill 600..999); instead of --mask.")
_STRENGTH = flags.DEFINE_float("strength", None, "SDEdit with --init_image: noise it to "
                               "t0 = strength * T in (0, 1] and sample from there.")
_RESAMPLE = flags.DEFINE_integer("resample", None, "Inpainting: RePaint's resample count r >= 1 "
                                 "(each step taken r times).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: image i depends on it and i alone.")
_SAVE_LATENTS = flags.DEFINE_bool("save_latents", False, "A latent model's .npz holds its "
                                  "latents too (key 'latents').")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  mask_flags = [flag.name for flag in (_MASK, _KNOWN_FRAMES, _KNOWN_SAMPLES) if flag.value]
  if len(mask_flags) > 1:
    raise ValueError(f"--{mask_flags[0]} and --{mask_flags[1]} both say what is known: give one")
  sample.check_edits(init_image=bool(_INIT_IMAGE.value), mask=bool(mask_flags),
                     strength=_STRENGTH.value is not None,
                     resample=_RESAMPLE.value is not None, prefix="--",
                     mask_name=mask_flags[0] if mask_flags else "mask")
  workdir = Workdir(_WORKDIR.value)
  config = workdir.load_config(defaults=common.base_config())
  sample.check_diffusion_run(workdir, config)
  overrides = {"sampler": _SAMPLER.value, "num_steps": _NUM_STEPS.value, "eta": _ETA.value,
               "spacing": _SPACING.value, "clip_x0": _CLIP.value, "threshold": _THRESHOLD.value,
               "guidance_scale": _GUIDANCE.value, "class_label": _CLASS_LABEL.value,
               "num_images": _NUM_SAMPLES.value, "batch_size": _BATCH_SIZE.value}
  with config.unlocked():
    config.sample.update({k: v for k, v in overrides.items() if v is not None})
    if _NUM_SAMPLES.value is not None and _BATCH_SIZE.value is None:
      config.sample.batch_size = min(config.sample.batch_size, _NUM_SAMPLES.value)
  shape = build.sample_shape(config)
  init_image = mask = None
  if _KNOWN_FRAMES.value:
    mask = masks.known_frames(_KNOWN_FRAMES.value, shape)
  if _KNOWN_SAMPLES.value:
    mask = masks.known_samples(_KNOWN_SAMPLES.value, shape)
  if _INIT_IMAGE.value:
    init_image = media.load(_INIT_IMAGE.value, config.data, name="--init_image")
  if _MASK.value:
    mask = media.load(_MASK.value, config.data, name="--mask", mask=True)
  compilation_cache.enable()
  parallel.initialize_distributed()
  paths, step = sample.sample_workdir(workdir, config, out=_OUT.value, seed=_SEED.value,
                                      init_image=init_image, mask=mask,
                                      strength=_STRENGTH.value, resample=_RESAMPLE.value,
                                      save_latents=_SAVE_LATENTS.value)
  if paths:
    print(f"step {step}: wrote {', '.join(paths[:-1])} and {paths[-1]}")


if __name__ == "__main__":
  cli.run(main)
