"""Named model architectures: plain dicts of config.model overrides.

  apply_preset(config, "ddpm_cifar10")   # config.model now describes DDPM's CIFAR-10 network

Presets set architecture only; the data shape (config.data.image_size / channels), the
conditioning (config.model.num_classes) and the compute dtype stay the config's own.
"""

PRESETS = {
    # Ho et al. 2020, appendix B: the CIFAR-10 network, 35.7M parameters at 32x32x3
    # (unconditional). DDPM adds the time embedding to the features (no scale-shift).
    "ddpm_cifar10": dict(
        base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_heads=1, dropout=0.1, num_groups=32,
        scale_shift=False),
    # The same network at half width: about 9.0M parameters at 32x32x3.
    "ddpm_cifar10_half": dict(
        base_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_heads=1, dropout=0.1, num_groups=32,
        scale_shift=False),
    # For tests and smoke runs: two levels, one block each; attention in the middle block only
    # (so any image size divisible by 2 works), ADM scale-shift.
    "tiny": dict(
        base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
        num_heads=2, dropout=0.0, num_groups=4, scale_shift=True),
}


def apply_preset(config, name: str):
  """Overwrites config.model with the preset `name`, in place; works on locked configs.

  Args:
    config: a diffax config (configs/common.py), locked or not.
    name: a key of PRESETS.

  Returns:
    config, for chaining.

  Raises:
    ValueError: if `name` is not a preset.
  """
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  overrides = PRESETS[name]
  # Keys the schema lacks (scale_shift) can only be added to an unlocked ConfigDict.
  with config.model.unlocked():
    for key, value in overrides.items():
      config.model[key] = value
  return config
