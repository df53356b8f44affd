"""diffusers' AutoencoderKL (Stable Diffusion's VAE) onto diffax's autoencoder
(`diffax.models.autoencoder`).

Both are LDM's KL autoencoder. Block i of `block_out_channels` is diffax's level i
(`base_channels * channel_mult[i]`), `layers_per_block` is `num_res_blocks` (the decoder has one
more per level in both), `mid_block_add_attention` is `mid_attention` (one head, q/k/v with
biases), and GroupNorm's epsilon is 1e-6 in both. Two differences are diffax options:
the encoder's stride-2 convs pad (0, 1) (`downsample_padding="asymmetric"`), and
`use_quant_conv` / `use_post_quant_conv` are diffax's `quant_conv`.

Options that do not change the network: `scaling_factor` is the latent stage's scale
(`latent_scale_factor`, the pipeline's `latent.scale_factor`); `force_upcast` is a float16
switch of diffusers' pipelines (diffax's params are float32 and its compute dtype is the
caller's). Any other option diffax's autoencoder does not implement raises a ValueError naming
it.
"""

import inspect
from typing import Any, Mapping, Optional

from diffax import models
from diffax.interop import weight_map
from diffax.models import autoencoder

DEFAULT_SCALING_FACTOR = 0.18215  # AutoencoderKL's default: Stable Diffusion 1.x and 2.x

_DOWN, _UP = "DownEncoderBlock2D", "UpDecoderBlock2D"
_ACTIVATIONS = ("silu", "swish")  # the same function in diffusers' get_activation


def autoencoder_config(config: Mapping[str, Any]) -> dict:
  """The `diffax.models.create_autoencoder` keywords of an AutoencoderKL config.

  Args:
    config: the model's config as a dict (`dict(vae.config)`, or its config.json).

  Raises:
    ValueError: naming the first option diffax's autoencoder does not implement.
  """
  config = dict(config)
  channels = tuple(int(c) for c in config.get("block_out_channels", (64,)))
  levels = len(channels)
  down = tuple(config.get("down_block_types", (_DOWN,)))
  up = tuple(config.get("up_block_types", (_UP,)))
  for key, types, want in (("down_block_types", down, _DOWN), ("up_block_types", up, _UP)):
    if set(types) != {want} or len(types) != levels:
      raise ValueError(f"AutoencoderKL {key}={types} is not supported (diffax maps {levels} x "
                       f"{want!r}, one per block_out_channels)")
  act = config.get("act_fn", "silu")
  if act not in _ACTIVATIONS:
    raise ValueError(f"AutoencoderKL act_fn={act!r} is not supported (diffax's autoencoder "
                     f"uses 'silu')")
  quant = bool(config.get("use_quant_conv", True))
  if bool(config.get("use_post_quant_conv", True)) != quant:
    raise ValueError(f"AutoencoderKL use_quant_conv={quant} with use_post_quant_conv="
                     f"{not quant} is not supported (diffax has both 1x1 convs or neither)")
  in_channels = int(config.get("in_channels", 3))
  out_channels = int(config.get("out_channels", 3))
  if in_channels != out_channels:
    raise ValueError(f"AutoencoderKL in_channels={in_channels} and out_channels={out_channels} "
                     f"differ; diffax's autoencoder reconstructs its input's channels")
  size = config.get("sample_size", 32)
  size = (size, size) if isinstance(size, int) else tuple(size)
  return dict(
      sample_shape=(*(int(s) for s in size), in_channels),
      **weight_map.levels(channels, "AutoencoderKL"),
      num_res_blocks=int(config.get("layers_per_block", 1)),
      latent_channels=int(config.get("latent_channels", 4)),
      mid_attention=bool(config.get("mid_block_add_attention", True)),
      num_groups=int(config.get("norm_num_groups", 32)),
      downsample_padding="asymmetric",
      quant_conv=quant,
  )


def latent_scale_factor(config: Mapping[str, Any]) -> float:
  """What a latent model multiplies the VAE's latents by: the config's `scaling_factor`
  (0.18215 when absent), the pipeline's `latent.scale_factor`.

  Raises:
    ValueError: the config shifts or standardizes its latents per channel (`shift_factor`,
      `latents_mean` / `latents_std`: SD3, Flux and others), which diffax's latent stage, a
      single scale, does not.
  """
  for key in ("shift_factor", "latents_mean", "latents_std"):
    if config.get(key) not in (None, 0, 0.0):
      raise ValueError(f"AutoencoderKL {key}={config[key]!r} is not supported: diffax's latent "
                       f"stage multiplies latents by one scale_factor and shifts none")
  factor = config.get("scaling_factor")
  return DEFAULT_SCALING_FACTOR if factor is None else float(factor)


def _with_defaults(arch: Mapping[str, Any]) -> dict:
  """`arch` with `autoencoder.build`'s default for every keyword it leaves out."""
  defaults = {name: p.default for name, p in inspect.signature(autoencoder.build).parameters.items()
              if p.kind is p.KEYWORD_ONLY}
  return {**defaults, **arch}


def _weight_map(arch: Mapping[str, Any]) -> weight_map.Entries:
  """Every parameter of the diffax autoencoder `arch` and its AutoencoderKL weights:
  `(diffax path, torch keys, kind)` (`weight_map`)."""
  arch = _with_defaults(arch)
  m = weight_map.Entries()
  base, mult = arch["base_channels"], tuple(arch["channel_mult"])
  levels, blocks = len(mult), arch["num_res_blocks"]

  def resnet(path, key, shortcut):
    for i in "12":
      m.norm(path + (f"norm{i}",), f"{key}.norm{i}")
      m.conv(path + (f"conv{i}",), f"{key}.conv{i}")
    if shortcut:
      m.dense(path + ("skip",), key + ".conv_shortcut", "shortcut")

  def middle(net):
    resnet((net, "mid", "res_0"), f"{net}.mid_block.resnets.0", False)
    if arch["mid_attention"]:
      m.attention((net, "mid", "attn"), f"{net}.mid_block.attentions.0")
    resnet((net, "mid", "res_1"), f"{net}.mid_block.resnets.1", False)

  def ends(net):
    m.norm((net, "norm_out"), f"{net}.conv_norm_out")
    m.conv((net, "conv_out"), f"{net}.conv_out")

  m.conv(("encoder", "conv_in"), "encoder.conv_in")
  channels = base
  for level in range(levels):
    for i in range(blocks):
      resnet(("encoder", f"down_{level}_res_{i}"), f"encoder.down_blocks.{level}.resnets.{i}",
             channels != base * mult[level])
      channels = base * mult[level]
    if level != levels - 1:
      m.conv(("encoder", f"down_{level}_downsample", "conv"),
             f"encoder.down_blocks.{level}.downsamplers.0.conv")
  middle("encoder")
  ends("encoder")
  m.conv(("decoder", "conv_in"), "decoder.conv_in")
  middle("decoder")
  for level in reversed(range(levels)):
    block = levels - 1 - level  # diffusers' up blocks run from the lowest resolution
    for i in range(blocks + 1):
      resnet(("decoder", f"up_{level}_res_{i}"), f"decoder.up_blocks.{block}.resnets.{i}",
             channels != base * mult[level])
      channels = base * mult[level]
    if level != 0:
      m.conv(("decoder", f"up_{level}_upsample", "conv"),
             f"decoder.up_blocks.{block}.upsamplers.0.conv")
  ends("decoder")
  if arch["quant_conv"]:
    m.dense(("encoder", "quant_conv"), "quant_conv", "shortcut")
    m.dense(("decoder", "post_quant_conv"), "post_quant_conv", "shortcut")
  return m


def convert_autoencoder(state_dict: Mapping[str, Any], arch: Mapping[str, Any]) -> dict:
  """AutoencoderKL weights -> the parameters of `models.create_autoencoder(**arch)`.

  Raises:
    ValueError: a weight missing from the state dict, or one the autoencoder does not use.
  """
  return weight_map.gather(state_dict, _weight_map(arch), what="AutoencoderKL")


def autoencoder_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, Any]
                               ) -> tuple[autoencoder.Autoencoder, dict]:
  """A diffusers AutoencoderKL as a diffax autoencoder.

  Args:
    config: the model's config as a dict (`dict(vae.config)`, or its config.json).
    state_dict: `{name: numpy array}` (a safetensors file, or `{k: v.numpy() for k, v in
      vae.state_dict().items()}`); diffusers' old attention names (query, key, value,
      proj_attn) load too.

  Returns:
    `(ae, params)`: `ae.encode(params, x)` on NHWC `x` gives the mean and log-variance of
    diffusers' `vae.encode(x).latent_dist`, `ae.decode(params, z)` its `vae.decode(z).sample`
    (transposed to NHWC). Neither scales the latents (`latent_scale_factor`).

  Raises:
    ValueError: an option or weight diffax's autoencoder does not have, named.
  """
  arch = autoencoder_config(config)
  ae = models.create_autoencoder(**arch)
  return ae, convert_autoencoder(state_dict, arch)


def autoencoder_to_diffusers(arch: Mapping[str, Any], params, *,
                             scaling_factor: Optional[float] = None) -> tuple[dict, dict]:
  """A diffax autoencoder as a diffusers AutoencoderKL: `(config, state_dict)` for
  `AutoencoderKL(**config).load_state_dict(...)` (or a config.json + safetensors directory).

  Args:
    arch: the `diffax.models.create_autoencoder` keywords (`sample_shape` included).
    params: its parameters (host or device arrays).
    scaling_factor: written as the config's `scaling_factor` (a latent model's
      `latent.scale_factor`); None: diffusers' default.

  Raises:
    ValueError: an autoencoder AutoencoderKL cannot express, named: symmetric downsampling
      padding (diffusers' VAE pads (0, 1)), or non-square images.
  """
  arch = _with_defaults(arch)
  padding = arch["downsample_padding"]
  if padding != "asymmetric":
    raise ValueError(f"downsample_padding={padding!r} has no AutoencoderKL equivalent (its "
                     f"encoder pads (0, 1)); only downsample_padding='asymmetric' converts")
  shape = tuple(arch["sample_shape"])
  if len(shape) != 3 or shape[0] != shape[1]:
    raise ValueError(f"AutoencoderKL writes one sample_size; sample_shape={shape} is not a "
                     f"square image")
  base, mult, quant = arch["base_channels"], tuple(arch["channel_mult"]), bool(arch["quant_conv"])
  config = dict(
      in_channels=shape[2], out_channels=shape[2], sample_size=shape[0],
      down_block_types=(_DOWN,) * len(mult), up_block_types=(_UP,) * len(mult),
      block_out_channels=tuple(base * k for k in mult),
      layers_per_block=arch["num_res_blocks"], act_fn="silu",
      latent_channels=arch["latent_channels"], norm_num_groups=arch["num_groups"],
      mid_block_add_attention=bool(arch["mid_attention"]),
      use_quant_conv=quant, use_post_quant_conv=quant,
      scaling_factor=DEFAULT_SCALING_FACTOR if scaling_factor is None else float(scaling_factor))
  return config, weight_map.scatter(params, _weight_map(arch))
