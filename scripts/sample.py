r"""Samples from a trained run: the newest checkpoint's EMA params -> PNG grid + .npz (and an
animated GIF for a video run, WAV files for an audio run).

  python scripts/sample.py --workdir=workdirs/digits --num_samples=64 --sampler=ddim \
      --num_steps=50 --out=workdirs/digits/samples.png

A class-conditional run (configs/digits_cond.py) takes a label and a guidance scale:

  python scripts/sample.py --workdir=workdirs/digits_cond --class_label=3 --guidance_scale=3

A text-conditional run (configs/digits_text.py) takes prompts, repeated or one per line of a
file; image i gets prompt i % (number of prompts) and the grid has one labelled row per prompt:

  python scripts/sample.py --workdir=workdirs/digits_text --prompt="a handwritten seven" \
      --prompt="the digit 3" --guidance_scale=3 --num_samples=16
  python scripts/sample.py --workdir=workdirs/digits_text --prompts_file=prompts.txt

A super-resolution run (configs/digits_sr.py) upsamples --low_res (noised to --noise_level);
a cascade runs stages in order, from a list of workdirs or a small config
(configs/cascade_digits.py), writing the last stage's grid, all stages side by side
(<out>_stages.png) and every stage's samples (.npz keys samples, stage_0, stage_1, ...):

  python scripts/sample.py --workdir=workdirs/digits_sr --low_res=small.png
  python scripts/sample.py --workdir=workdirs/digits_text_base4,workdirs/digits_sr \
      --prompt="a handwritten 3" --threshold=0.995
  python scripts/sample.py --cascade=configs/cascade_digits.py

Editing: inpainting keeps the known pixels of --init_image where --mask is nonzero (RePaint's
resampling with --resample=r); SDEdit starts from --init_image noised to --strength:

  python scripts/sample.py --workdir=DIR --init_image=digit.png --mask=top_half.png --resample=5
  python scripts/sample.py --workdir=DIR --init_image=digit.png --strength=0.5

Video and audio runs edit the same way; --known_frames and --known_samples say which part of
--init_image (a GIF or .npz clip; a WAV or .npz clip) is kept, instead of a --mask file:

  python scripts/sample.py --workdir=DIR --init_image=clip.npz --known_frames=0-3   # predict
  python scripts/sample.py --workdir=DIR --init_image=clip.gif --known_frames=0,7   # interpolate
  python scripts/sample.py --workdir=DIR --init_image=note.wav --known_samples=:600,1000:  # infill

unCLIP (configs/digits_clip.py, digits_prior.py, digits_decoder.py): prompts go through the
prior, then the decoder (--workdir=PRIOR,DECODER; --prior_guidance_scale for the prior,
--guidance_scale for the decoder); a decoder alone draws variations of an image:

  python scripts/sample.py --workdir=workdirs/digits_prior,workdirs/digits_decoder \
      --prompt="a handwritten 7" --num_samples=16
  python scripts/sample.py --workdir=workdirs/digits_decoder --variations_of=digit.png \
      --num_samples=15

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
from ml_collections import config_flags

from configs import common
from diffax import sampling
from diffax.models import low_res as low_res_lib
from diffax.pipeline import build
from diffax.pipeline import cascade
from diffax.pipeline import cli
from diffax.pipeline import compilation_cache
from diffax.pipeline import images
from diffax.pipeline import masks
from diffax.pipeline import media
from diffax.pipeline import parallel
from diffax.pipeline import sample
from diffax.pipeline import unclip
from diffax.pipeline.workdir import Workdir
import jax  # pylint: disable=g-bad-import-order

_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by scripts/train.py; "
                                "several, comma-separated, run a cascade (base first).")
_CASCADE = config_flags.DEFINE_config_file("cascade", None, "A cascade config "
                                           "(configs/cascade_*.py): its stages' workdirs and "
                                           "sampling settings, prompts and image count.")
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
_PROMPT = flags.DEFINE_multi_string("prompt", None, "A prompt (text-conditional runs); repeat "
                                    "for several: image i gets prompt i % (number of prompts).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "A text file of prompts, one per "
                                   "line (blank lines skipped), after any --prompt.")
_LOW_RES = flags.DEFINE_string("low_res", None, "Super-resolution runs: the low-res image(s) "
                               "to upsample, PNG or .npz (like --init_image).")
_NOISE_LEVEL = flags.DEFINE_float("noise_level", None, "Super-resolution: the augmentation "
                                  "noise level of the low-res input, in [0, 1].")
_VARIATIONS_OF = flags.DEFINE_string("variations_of", None, "unCLIP decoder runs: a PNG or "
                                     ".npz (like --init_image) of the image(s) to vary: their "
                                     "embeddings are decoded --num_samples times.")
_PRIOR_GUIDANCE = flags.DEFINE_float("prior_guidance_scale", None, "unCLIP: the prior's "
                                     "guidance scale (default: its config's).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed: image i depends on it and i alone.")
_SAVE_LATENTS = flags.DEFINE_bool("save_latents", False, "A latent model's .npz holds its "
                                  "latents too (key 'latents').")
flags.register_validator("workdir", lambda v: v is not None or flags.FLAGS["cascade"].present,
                         "--workdir (or --cascade) is required")


def read_prompts():
  """The prompts of --prompt and --prompts_file, in order, or None when neither is given."""
  prompts = list(_PROMPT.value or [])
  if _PROMPTS_FILE.value:
    if not os.path.exists(_PROMPTS_FILE.value):
      raise FileNotFoundError(f"--prompts_file={_PROMPTS_FILE.value}: no such file")
    with open(_PROMPTS_FILE.value, encoding="utf-8") as f:
      from_file = [line.strip() for line in f if line.strip()]
    if not from_file:
      raise ValueError(f"--prompts_file={_PROMPTS_FILE.value} holds no prompt (one per line)")
    prompts += from_file
  return prompts or None


def sample_overrides() -> dict:
  """The config.sample fields the flags set (None: not given)."""
  return {"sampler": _SAMPLER.value, "num_steps": _NUM_STEPS.value, "eta": _ETA.value,
          "spacing": _SPACING.value, "clip_x0": _CLIP.value, "threshold": _THRESHOLD.value,
          "guidance_scale": _GUIDANCE.value, "class_label": _CLASS_LABEL.value,
          "noise_level": _NOISE_LEVEL.value, "num_images": _NUM_SAMPLES.value,
          "batch_size": _BATCH_SIZE.value}


def run_cascade(prompts):
  """--cascade=CONFIG or --workdir=A,B,...: every stage in order, each with its settings."""
  if _INIT_IMAGE.value or _MASK.value or _LOW_RES.value:
    raise ValueError("a cascade draws its own inputs: --init_image, --mask and --low_res are "
                     "for one workdir")
  c = _CASCADE.value
  if c is not None:
    workdirs = [Workdir(c[stage].workdir) for stage in c.stages]
    per_stage = [c[stage].sample.to_dict() for stage in c.stages]
    prompts = prompts or list(c.prompts)
    num_images = _NUM_SAMPLES.value or c.num_images
  else:
    workdirs = [Workdir(w) for w in _WORKDIR.value.split(",")]
    per_stage = [{} for _ in workdirs]
    num_images = _NUM_SAMPLES.value
  flags_set = {k: v for k, v in sample_overrides().items()
               if v is not None and k not in ("num_images", "batch_size")}
  for workdir, overrides in zip(workdirs, per_stage):
    config = workdir.load_config(defaults=common.base_config())
    for key, value in flags_set.items():  # a flag applies to the stages it means something to
      if key == "guidance_scale" and not (config.model.num_classes or config.model.context_dim):
        continue
      if key == "noise_level" and not config.model.low_res_size:
        continue
      overrides[key] = value
  stages = cascade.load(workdirs, per_stage, defaults=common.base_config())
  num_images = num_images or stages[0].config.sample.num_images
  compilation_cache.enable()
  parallel.initialize_distributed()
  outputs = cascade.sample(stages, prompts=prompts, num_images=num_images,
                           batch_size=_BATCH_SIZE.value, seed=_SEED.value,
                           class_label=_CLASS_LABEL.value, progress=True)
  if jax.process_index() == 0:
    text = prompts and "context" in stages[0].net.cond_keys
    labels = [prompts[i % len(prompts)] for i in range(num_images)] if text else None
    out = _OUT.value or workdirs[-1].default_cascade_samples()
    png, stages_png, npz = cascade.save(out, outputs, labels=labels)
    print(f"{len(stages)} stages: wrote {png}, {stages_png} and {npz}")


def run_unclip(prompts):
  """--workdir=PRIOR,DECODER with prompts, or --workdir=DECODER --variations_of=IMAGE."""
  workdirs = _WORKDIR.value.split(",")
  others = [f"--{f.name}" for f in (_INIT_IMAGE, _MASK, _LOW_RES, _STRENGTH, _RESAMPLE,
                                    _CLASS_LABEL) if f.value is not None]
  if others:
    raise ValueError(f"{', '.join(others)}: not for unCLIP, which draws from prompts (prior, "
                     f"decoder) or from --variations_of")
  overrides = {"guidance_scale": _GUIDANCE.value, "num_steps": _NUM_STEPS.value,
               "batch_size": _BATCH_SIZE.value}
  num_images = _NUM_SAMPLES.value or 16
  compilation_cache.enable()
  if _VARIATIONS_OF.value:
    if len(workdirs) != 1 or prompts:
      raise ValueError("--variations_of takes one --workdir, the decoder's, and no --prompt")
    out = _OUT.value or Workdir(workdirs[0]).default_samples()
    paths = unclip.sample_variations(workdirs[0], _VARIATIONS_OF.value,
                                     num_images=num_images, out=out, seed=_SEED.value,
                                     decoder_overrides=overrides)
  else:
    if len(workdirs) != 2:
      raise ValueError(f"--workdir={_WORKDIR.value}: an unCLIP stack is two workdirs, "
                       f"PRIOR,DECODER")
    out = _OUT.value or Workdir(workdirs[1]).default_samples()
    paths = unclip.sample_prompts(workdirs[0], workdirs[1], prompts, num_images=num_images,
                                  out=out, seed=_SEED.value,
                                  prior_guidance=_PRIOR_GUIDANCE.value,
                                  decoder_overrides=overrides)
  print(f"unCLIP: wrote {', '.join(paths)}")


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
  prompts = read_prompts()
  if _VARIATIONS_OF.value or (_WORKDIR.value and unclip.is_prior_run(
      _WORKDIR.value.split(",")[0])):
    run_unclip(prompts)
    return
  if _CASCADE.value is not None or "," in _WORKDIR.value:
    run_cascade(prompts)
    return
  workdir = Workdir(_WORKDIR.value)
  config = workdir.load_config(defaults=common.base_config())
  sample.check_diffusion_run(workdir, config)
  with config.unlocked():
    config.sample.update({k: v for k, v in sample_overrides().items() if v is not None})
    if _NUM_SAMPLES.value is not None and _BATCH_SIZE.value is None:
      config.sample.batch_size = min(config.sample.batch_size, _NUM_SAMPLES.value)
  if prompts and config.model.get("embedding_dim"):
    raise ValueError(f"--prompt on the unCLIP decoder {workdir} needs its prior first: "
                     f"--workdir=PRIOR,{workdir}")
  if prompts and not config.model.context_dim:
    raise ValueError(f"--prompt needs a text-conditional model; the run in {workdir} was "
                     f"trained without text (config.model.context_dim is 0)"
                     + (": use --class_label" if config.model.num_classes else ""))
  shape = build.sample_shape(config)
  init_image = mask = low_res = None
  if _KNOWN_FRAMES.value:
    mask = masks.known_frames(_KNOWN_FRAMES.value, shape)
  if _KNOWN_SAMPLES.value:
    mask = masks.known_samples(_KNOWN_SAMPLES.value, shape)
  if _INIT_IMAGE.value:
    init_image = media.load(_INIT_IMAGE.value, config.data, name="--init_image")
  if _MASK.value:
    mask = media.load(_MASK.value, config.data, name="--mask", mask=True)
  if _LOW_RES.value:
    if not config.model.low_res_size:
      raise ValueError(f"--low_res needs a super-resolution model; the run in {workdir} has "
                       f"config.model.low_res_size 0")
    low_res = images.load_image(_LOW_RES.value, low_res_lib.low_res_shape(
        shape, config.model.low_res_size), name="--low_res")
  compilation_cache.enable()
  parallel.initialize_distributed()
  paths, step = sample.sample_workdir(workdir, config, out=_OUT.value, seed=_SEED.value,
                                      prompts=prompts, low_res=low_res,
                                      init_image=init_image, mask=mask,
                                      strength=_STRENGTH.value, resample=_RESAMPLE.value,
                                      save_latents=_SAVE_LATENTS.value)
  if paths:
    print(f"step {step}: wrote {', '.join(paths[:-1])} and {paths[-1]}")


if __name__ == "__main__":
  cli.run(main)
