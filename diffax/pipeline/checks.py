"""Cross-field config checks: rules that tie two fields together.

A single value is checked once, where it is used (the library checks its keywords, `build`
names the config section); what no single use can see is checked here, before anything builds,
compiles or reads data, with messages that name every field involved.
"""


def check_conditioning(config) -> None:
  """Condition dropout, guidance, the class label, prompts and the super-resolution settings
  against the model's conditioning."""
  m = config.model
  num_classes = m.num_classes
  text = m.get("context_dim", 0)
  # keys with a null condition (label, context, embedding)
  droppable = bool(num_classes or text or m.get("embedding_dim", 0))
  what = ("config.model.num_classes > 0, config.model.context_dim > 0 or "
          "config.model.embedding_dim > 0")
  dropout = config.train.cond_dropout
  if dropout > 0 and not droppable:
    raise ValueError(f"config.train.cond_dropout={dropout} needs a conditional model (set "
                     f"{what}): an unconditional model has no condition to drop")
  scale = config.sample.guidance_scale
  if scale != 1 and not droppable:
    raise ValueError(f"config.sample.guidance_scale={scale} needs a conditional model "
                     f"({what}); an unconditional model allows only 1")
  if scale != 1 and not dropout > 0:
    raise ValueError(f"config.sample.guidance_scale={scale} needs a model trained with "
                     f"config.train.cond_dropout > 0: with 0 its null condition (the "
                     f"unconditional model) was never trained; only 1 (conditional) is "
                     f"meaningful")
  label = config.sample.class_label
  if label != -1 and not 0 <= label < num_classes:
    allowed = (f"-1 (image i gets i % {num_classes}) or 0 .. {num_classes - 1}" if num_classes
               else "-1 (an unconditional model takes no label)")
    raise ValueError(f"config.sample.class_label must be {allowed}, got {label!r}")
  prompts = config.sample.get("prompts", ())
  if prompts and not text:
    raise ValueError(f"config.sample.prompts={tuple(prompts)!r} needs a text-conditional model "
                     f"(config.model.context_dim > 0)")
  low_res = m.get("low_res_size", 0)
  for field in ("train.low_res_noise", "sample.noise_level"):
    section, key = field.split(".")
    value = config[section].get(key, 0.0)
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"config.{field} must lie in [0, 1], got {value}")
    if value and not low_res:
      raise ValueError(f"config.{field}={value} needs a super-resolution model "
                       f"(config.model.low_res_size > 0)")


def check_latent_sampling(config) -> None:
  """Clipping to pixels' range has no place in a latent model's sampler: its x0 estimates are
  unit-variance latents, not images in [-1, 1]."""
  section = config.get("latent")
  if section is None or not section.get("autoencoder_workdir"):
    return
  if config.sample.clip_x0:
    raise ValueError("config.sample.clip_x0=True clips x0 estimates to [-1, 1], the range of "
                     "pixels; a latent model (config.latent.autoencoder_workdir is set) "
                     "samples unit-variance latents: set config.sample.clip_x0=False")
  if config.sample.threshold:
    raise ValueError(f"config.sample.threshold={config.sample.threshold} (dynamic "
                     f"thresholding) rescales x0 estimates to [-1, 1], the range of pixels; a "
                     f"latent model samples unit-variance latents: set config.sample.threshold=0")


def check_sampling(config) -> None:
  """`config.sample` against the trained schedule, conditioning and latent space."""
  if config.sample.num_steps > config.diffusion.num_steps:
    raise ValueError(f"config.sample.num_steps={config.sample.num_steps} exceeds the "
                     f"config.diffusion.num_steps={config.diffusion.num_steps} the model was "
                     f"trained on")
  check_conditioning(config)
  check_latent_sampling(config)


def check(config) -> None:
  """Every cross-field rule of a training config (an autoencoder run samples nothing)."""
  if config.get("task", "diffusion") == "diffusion":
    check_sampling(config)
