"""Checks a config up front, before anything compiles or touches data.

Every check names the field, the bad value and what is allowed, so a typo in
`--config.sample.sampler=ddmi` fails in a second instead of deep inside a jitted trace.
"""

from diffax import data
from diffax import diffusion
from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules


def _one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"unknown {field} {value!r}; choose one of {sorted(allowed)}")


def _positive_int(field: str, value, *, allow_zero: bool = False) -> None:
  low = 0 if allow_zero else 1
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"{field} must be an int >= {low}, got {value!r}")


def validate_sampling(config) -> None:
  """The checks on `config.sample` alone (what scripts/sample.py can override)."""
  _one_of("sample.sampler", config.sample.sampler, sampling.SAMPLERS)
  _positive_int("sample.num_steps", config.sample.num_steps)
  if config.sample.num_steps > config.diffusion.num_steps:
    raise ValueError(f"sample.num_steps={config.sample.num_steps} exceeds the "
                     f"diffusion.num_steps={config.diffusion.num_steps} the model was trained on")
  if config.sample.eta is not None and not 0.0 <= config.sample.eta:
    raise ValueError(f"sample.eta must be >= 0 (or None: the sampler's default), got "
                     f"{config.sample.eta}")
  _one_of("sample.spacing", config.sample.spacing, sampling.SPACINGS)
  num_classes = config.model.num_classes
  scale = config.sample.guidance_scale
  if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
    raise ValueError(f"sample.guidance_scale must be a number >= 0 (0 unconditional, 1 "
                     f"conditional, > 1 guided), got {scale!r}")
  if scale != 1 and not num_classes:
    raise ValueError(f"sample.guidance_scale={scale} needs a class-conditional model "
                     "(model.num_classes > 0, trained with train.label_dropout > 0 so that it "
                     "also learned the unconditional model); an unconditional model allows only "
                     "1")
  if scale != 1 and not config.train.get("label_dropout", 0.0) > 0:
    raise ValueError(f"sample.guidance_scale={scale} needs a model trained with "
                     "train.label_dropout > 0: with 0 its null label (the unconditional model) "
                     "was never trained; only 1 (conditional) is meaningful")
  label = config.sample.class_label
  if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < max(
      num_classes, 0):
    allowed = (f"-1 (image i gets i % {num_classes}) or 0 .. {num_classes - 1}" if num_classes
               else "-1 (an unconditional model takes no label)")
    raise ValueError(f"sample.class_label must be {allowed}, got {label!r}")
  threshold = config.sample.threshold
  if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
      0 <= threshold < 1):
    raise ValueError(f"sample.threshold must lie in [0, 1): 0 disables dynamic thresholding, p "
                     f"clips at the p-quantile of |x0| (Imagen: 0.995); got {threshold!r}")
  _positive_int("sample.num_images", config.sample.num_images)
  _positive_int("sample.batch_size", config.sample.batch_size)


def validate_config(config) -> None:
  """Raises ValueError on the first invalid field of a diffax config.

  Checks names (schedule, prediction, loss weighting, sampler, model, dataset), integer
  fields, and the model's consistency with the data (`models.create` validates the network).
  """
  _one_of("diffusion.schedule", config.diffusion.schedule, schedules.SCHEDULES)
  _one_of("diffusion.prediction", config.diffusion.prediction, diffusion.PREDICTIONS)
  _one_of("diffusion.loss_weighting", config.diffusion.loss_weighting, losses.WEIGHTINGS)
  _one_of("model.name", config.model.name, models.MODELS)
  _positive_int("diffusion.num_steps", config.diffusion.num_steps)
  _positive_int("data.image_size", config.data.image_size)
  _positive_int("data.channels", config.data.channels)
  for field in ("num_steps", "batch_size", "log_every", "checkpoint_every",
                "keep_checkpoints"):
    _positive_int(f"train.{field}", config.train[field])
  _positive_int("train.sample_every", config.train.sample_every, allow_zero=True)
  if not 0.0 <= config.train.label_dropout <= 1.0:
    raise ValueError(f"train.label_dropout must lie in [0, 1], got {config.train.label_dropout}")
  if config.train.label_dropout > 0 and not config.model.num_classes:
    raise ValueError("train.label_dropout > 0 needs a class-conditional model: set "
                     "model.num_classes")
  if config.optim.learning_rate <= 0:
    raise ValueError(f"optim.learning_rate must be > 0, got {config.optim.learning_rate}")
  validate_sampling(config)
  models.create(config)  # validates the network against the data shape; builds nothing
  data.dataset_info(config)  # the dataset exists (or is embedded) and fits image_size/channels
