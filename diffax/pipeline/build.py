"""Config sections in, library objects out: the one place that reads a config to call diffax.

Each builder hands its section's fields to the library as keywords. The library checks every
value where it uses it; a ValueError it raises comes back prefixed with the section
("config.model: num_groups=32 must divide ..."), so the message names the field.
"""

import contextlib
from typing import Optional

from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules

# config.model keys that are not architecture keywords of models.create.
_MODEL_KEYS = ("name", "dtype", "fast_layers")


@contextlib.contextmanager
def section(name: str):
  """Re-raises a library ValueError with the config section it came from."""
  try:
    yield
  except ValueError as e:
    message = str(e)
    raise ValueError(message if message.startswith("config.") else f"{name}: {message}") from e


def schedule(config) -> schedules.Schedule:
  """The noise schedule of `config.diffusion`."""
  d = config.diffusion
  if d.schedule not in schedules.SCHEDULES:
    raise ValueError(f"config.diffusion.schedule={d.schedule!r} is unknown; choose one of "
                     f"{sorted(schedules.SCHEDULES)}")
  with section("config.diffusion"):
    if d.schedule in ("linear", "scaled_linear"):
      return schedules.SCHEDULES[d.schedule](d.num_steps, d.beta_start, d.beta_end)
    return schedules.cosine(d.num_steps)


def sample_shape(config) -> tuple:
  """The shape of one training example, from `config.data`."""
  size, channels = config.data.image_size, config.data.channels
  return (size, size, channels)


def model(config, *, dtype: Optional[str] = None) -> models.Model:
  """The network of `config.model` for the examples of `config.data`.

  Args:
    config: the run config.
    dtype: the compute dtype; default `config.model.dtype`.
  """
  m = config.model
  arch = {k: v for k, v in m.items() if k not in _MODEL_KEYS}
  with section("config.model"):
    return models.create(m.name, sample_shape=sample_shape(config),
                         dtype=m.dtype if dtype is None else dtype,
                         fast_layers=m.get("fast_layers"), **arch)


def loss_fn(config, net: models.Model, noise_schedule: schedules.Schedule):
  """The denoising loss of `config.diffusion` and the condition dropout of `config.train`."""
  if config.diffusion.loss_weighting not in losses.WEIGHTINGS:  # the keyword is `weighting`
    raise ValueError(f"config.diffusion.loss_weighting={config.diffusion.loss_weighting!r} is "
                     f"unknown; choose one of {list(losses.WEIGHTINGS)}")
  with section("config.diffusion"):
    return losses.make_loss_fn(
        net.apply_fn, noise_schedule,
        prediction=config.diffusion.prediction,
        weighting=config.diffusion.loss_weighting,
        min_snr_gamma=config.diffusion.min_snr_gamma,
        null_cond=net.null_cond,
        cond_dropout=config.train.cond_dropout)


def guided(config) -> bool:
  """Whether sampling uses classifier-free guidance: a guidance scale other than 1."""
  return config.sample.guidance_scale != 1


def sampler(config, net: models.Model, noise_schedule: schedules.Schedule, *,
            batch_size: int) -> sampling.CompiledSampler:
  """The compile-once sampler of `config.sample` drawing `batch_size` examples per call."""
  s = config.sample
  with section("config.sample"):
    return sampling.make_sampler(
        net.apply_fn, noise_schedule, (batch_size, *net.sample_shape), sampler=s.sampler,
        max_steps=s.num_steps, prediction=config.diffusion.prediction, spacing=s.spacing,
        clip_x0=s.clip_x0, threshold=s.threshold or None,
        null_cond=net.null_cond if guided(config) else None)
