"""Config sections in, library objects out: the one place that reads a config to call diffax.

Each builder hands its section's fields to the library as keywords. The library checks every
value where it uses it; a ValueError it raises comes back prefixed with the section
("config.model: num_groups=32 must divide ..."), so the message names the field.
"""

import contextlib
import dataclasses
from typing import Optional

from diffax import autoencoder_loss
from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules
from diffax.pipeline import kinds

# config.model keys that are not architecture keywords of models.create.
MODEL_KEYS = ("name", "dtype", "fast_layers")


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
  """The shape of one training example, from `config.data`: (H, W, C) for images, (T, H, W, C)
  for video, (L, C) for audio (`kinds`)."""
  return kinds.sample_shape(config.data)


def model(config, *, dtype: Optional[str] = None,
          shape: Optional[tuple] = None) -> models.Model:
  """The network of `config.model` for the examples of `config.data`.

  Args:
    config: the run config.
    dtype: the compute dtype; default `config.model.dtype`.
    shape: the shape of one example the network sees; default `sample_shape(config)`, the
      images (a latent diffusion model sees latents instead: `latent.latent_shape`).
  """
  m = config.model
  arch = {k: v for k, v in m.items() if k not in MODEL_KEYS}
  with section("config.model"):
    net = models.create(m.name, sample_shape=sample_shape(config) if shape is None else shape,
                        dtype=m.dtype if dtype is None else dtype,
                        fast_layers=m.get("fast_layers"), **arch)
  if "context" in net.null_cond and config.get("text") and config.text.get("attend_padding"):
    # Stable Diffusion's null condition: the encoded empty prompt, not a sequence of no token.
    from diffax.pipeline import text  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    net = dataclasses.replace(net, null_cond={**net.null_cond,
                                              **text.from_config(config).null_cond()})
  return net


def autoencoder(config):
  """The KL autoencoder of `config.model` (`name = "autoencoder"`) for `config.data`'s images."""
  m = config.model
  if m.name != "autoencoder":
    raise ValueError(f"config.model.name={m.name!r}: config.task='autoencoder' trains the model "
                     f"'autoencoder'")
  arch = {k: v for k, v in m.items() if k not in MODEL_KEYS}
  with section("config.model"):
    return models.create_autoencoder(sample_shape=sample_shape(config), dtype=m.dtype,
                                     fast_layers=m.get("fast_layers"), **arch)


def discriminator(config):
  """The PatchGAN discriminator of `config.autoencoder`, or None when `disc_weight` is 0."""
  a = config.autoencoder
  if not a.disc_weight > 0:
    return None
  with section("config.autoencoder"):
    return models.create_discriminator(
        sample_shape=sample_shape(config), base_channels=a.disc_channels,
        num_layers=a.disc_layers, num_groups=config.model.num_groups,
        fast_layers=config.model.get("fast_layers"))


def autoencoder_loss_fn(config, ae, disc):
  """The autoencoder's loss of `config.autoencoder` (`diffax.autoencoder_loss`)."""
  a = config.autoencoder
  with section("config.autoencoder"):
    return autoencoder_loss.make_loss_fn(
        ae, disc, reconstruction=a.reconstruction, kl_weight=a.kl_weight,
        disc_weight=a.disc_weight, disc_start=a.disc_start, sample=a.sample_posterior)


def loss_fn(config, net: models.Model, noise_schedule: schedules.Schedule):
  """The denoising loss of `config.diffusion`, with the condition dropout and low-res
  augmentation of `config.train`."""
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
        cond_dropout=config.train.cond_dropout,
        low_res_noise=config.train.get("low_res_noise", 0.0))


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
