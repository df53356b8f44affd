"""diffusers' UNet2DModel onto diffax's U-Net (`diffax.models.unet`).

The DDPM checkpoints of diffusers (google/ddpm-cifar10-32, -celebahq-256, ...) are UNet2DModel:
the DDPM U-Net of Ho et al., which is diffax's with `scale_shift=False`. Block i of
`block_out_channels` is diffax's level i (`base_channels * channel_mult[i]`), an
`AttnDownBlock2D` is a level with attention, and the timestep embedding is DDPM's
(`flip_sin_to_cos=False, freq_shift=1`).

Configuration options diffax's U-Net does not have raise a ValueError naming the option.
"""

from typing import Any, Callable, Mapping

import numpy as np

from diffax import models

_DOWN = {"DownBlock2D": False, "AttnDownBlock2D": True}
_UP = {"UpBlock2D": False, "AttnUpBlock2D": True}

# UNet2DModel options and the only value diffax's U-Net implements (checked when present).
_REQUIRED = {
    "act_fn": "silu", "center_input_sample": False, "time_embedding_type": "positional",
    "flip_sin_to_cos": False, "freq_shift": 1, "add_attention": True, "class_embed_type": None,
    "downsample_type": "conv", "upsample_type": "conv", "norm_eps": 1e-6,
    "attn_norm_num_groups": None, "resnet_time_scale_shift": None,  # checked below
}


def unet_config(config: Mapping[str, Any]) -> dict:
  """The `diffax.models.create` keywords of a UNet2DModel config.

  Raises:
    ValueError: naming the first option diffax's U-Net does not implement.
  """
  config = dict(config)
  for key, want in _REQUIRED.items():
    if key == "resnet_time_scale_shift" or key not in config:
      continue
    if config[key] != want:
      raise ValueError(f"UNet2DModel option {key}={config[key]!r} is not supported by diffax's "
                       f"U-Net (it implements {key}={want!r})")
  shift = config.get("resnet_time_scale_shift", "default")
  if shift != "default":
    # UNet2DModel's scale_shift variant also drops the GroupNorm of its middle attention.
    raise ValueError(f"UNet2DModel option resnet_time_scale_shift={shift!r} is not supported "
                     f"(diffax maps 'default', DDPM's additive time embedding)")
  channels = tuple(int(c) for c in config["block_out_channels"])
  base = channels[0]
  if any(c % base for c in channels):
    raise ValueError(f"UNet2DModel block_out_channels={channels} must be multiples of the first")
  down = tuple(config["down_block_types"])
  up = tuple(config["up_block_types"])
  unknown = [b for b in down if b not in _DOWN] + [b for b in up if b not in _UP]
  if unknown:
    raise ValueError(f"UNet2DModel block type(s) {unknown} are not supported; diffax maps "
                     f"{sorted(_DOWN)} and {sorted(_UP)}")
  attention = [_DOWN[b] for b in down]
  if [_UP[b] for b in reversed(up)] != attention:
    raise ValueError(f"UNet2DModel up_block_types={up} must mirror down_block_types={down} "
                     f"(attention at the same resolutions)")
  if config["in_channels"] != config["out_channels"]:
    raise ValueError(f"UNet2DModel in_channels={config['in_channels']} and out_channels="
                     f"{config['out_channels']} differ; diffax predicts the input's channels")
  size = config["sample_size"]
  size = (size, size) if isinstance(size, int) else tuple(size)
  head_dim = config.get("attention_head_dim")
  attn_channels = {c for c, a in zip(channels, attention) if a} | {channels[-1]}
  heads = {1 if head_dim is None else c // head_dim for c in attn_channels}
  if len(heads) != 1 or (head_dim is not None and any(c % head_dim for c in attn_channels)):
    raise ValueError(f"UNet2DModel attention_head_dim={head_dim} gives different head counts "
                     f"at the attention levels {sorted(attn_channels)}; diffax uses one num_heads")
  num_classes = config.get("num_class_embeds")
  return dict(
      sample_shape=(*size, int(config["in_channels"])),
      base_channels=base,
      channel_mult=tuple(c // base for c in channels),
      num_res_blocks=int(config["layers_per_block"]),
      attention_resolutions=tuple(size[0] // 2**i for i, a in enumerate(attention) if a),
      num_heads=heads.pop(),
      dropout=float(config.get("dropout", 0.0)),
      num_groups=int(config.get("norm_num_groups", 32)),
      num_classes=0 if not num_classes else int(num_classes) - 1,
      scale_shift=False,
  )


def _conv_in(w):  # torch OIHW -> HWIO
  return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))


def _conv_out(w):  # HWIO -> torch OIHW
  return np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (3, 2, 0, 1)))


def _dense_in(w):  # torch [out, in] (or a 1x1 conv [out, in, 1, 1]) -> [in, out]
  w = np.asarray(w, np.float32)
  return w.reshape(w.shape[0], w.shape[1]).T


def _copy(w):
  return np.array(w, np.float32)


def _weight_map(arch: dict) -> list:
  """Every parameter of the diffax U-Net `arch` and its UNet2DModel weights:
  `(diffax path, torch keys, kind)`, kind one of conv | dense | shortcut | vector | qkv."""
  entries = []

  def conv(path, key):
    entries.append((path + ("kernel",), (key + ".weight",), "conv"))
    entries.append((path + ("bias",), (key + ".bias",), "vector"))

  def dense(path, key, kind="dense"):
    entries.append((path + ("kernel",), (key + ".weight",), kind))
    entries.append((path + ("bias",), (key + ".bias",), "vector"))

  def norm(path, key):
    entries.append((path + ("scale",), (key + ".weight",), "vector"))
    entries.append((path + ("bias",), (key + ".bias",), "vector"))

  def resnet(name, key, shortcut):
    conv((name, "conv1"), key + ".conv1")
    conv((name, "conv2"), key + ".conv2")
    norm((name, "norm1"), key + ".norm1")
    norm((name, "norm2"), key + ".norm2")
    dense((name, "temb_proj"), key + ".time_emb_proj")
    if shortcut:
      dense((name, "skip"), key + ".conv_shortcut", "shortcut")

  def attention(name, key):
    norm((name, "norm"), key + ".group_norm")
    entries.append(((name, "qkv", "kernel"), tuple(f"{key}.to_{n}.weight" for n in "qkv"), "qkv"))
    entries.append(((name, "qkv", "bias"), tuple(f"{key}.to_{n}.bias" for n in "qkv"), "qkv"))
    dense((name, "proj_out"), key + ".to_out.0")

  base, mult = arch["base_channels"], arch["channel_mult"]
  levels, size = len(mult), arch["sample_shape"][0]
  conv(("conv_in",), "conv_in")
  dense(("temb_dense0",), "time_embedding.linear_1")
  dense(("temb_dense1",), "time_embedding.linear_2")
  if arch["num_classes"]:
    entries.append((("label_embed", "embedding"), ("class_embedding.weight",), "vector"))
  channels, skips = base, [base]
  for level in range(levels):
    attn = size // 2**level in arch["attention_resolutions"]
    for i in range(arch["num_res_blocks"]):
      out = base * mult[level]
      resnet(f"down_{level}_res_{i}", f"down_blocks.{level}.resnets.{i}", channels != out)
      channels = out
      skips.append(channels)
      if attn:
        attention(f"down_{level}_attn_{i}", f"down_blocks.{level}.attentions.{i}")
    if level != levels - 1:
      conv((f"down_{level}_downsample", "conv"), f"down_blocks.{level}.downsamplers.0.conv")
      skips.append(channels)
  resnet("mid_res_0", "mid_block.resnets.0", False)
  attention("mid_attn", "mid_block.attentions.0")
  resnet("mid_res_1", "mid_block.resnets.1", False)
  for level in reversed(range(levels)):
    block = levels - 1 - level  # diffusers' up blocks run from the lowest resolution
    attn = size // 2**level in arch["attention_resolutions"]
    for i in range(arch["num_res_blocks"] + 1):
      out = base * mult[level]
      resnet(f"up_{level}_res_{i}", f"up_blocks.{block}.resnets.{i}",
             channels + skips.pop() != out)
      channels = out
      if attn:
        attention(f"up_{level}_attn_{i}", f"up_blocks.{block}.attentions.{i}")
    if level != 0:
      conv((f"up_{level}_upsample", "conv"), f"up_blocks.{block}.upsamplers.0.conv")
  norm(("norm_out",), "conv_norm_out")
  conv(("conv_out",), "conv_out")
  return entries


def convert_unet2d(state_dict: Mapping[str, Any], arch: dict) -> dict:
  """UNet2DModel weights -> the parameter tree of `models.create("unet", **arch)`.

  Raises:
    ValueError: a weight missing from the state dict, or one the U-Net does not use.
  """
  params, used = {}, set()
  for path, keys, kind in _weight_map(arch):
    missing = [k for k in keys if k not in state_dict]
    if missing:
      raise ValueError(f"the UNet2DModel state dict has no {missing[0]!r}")
    used.update(keys)
    values = [state_dict[k] for k in keys]
    if kind == "conv":
      value = _conv_in(values[0])
    elif kind in ("dense", "shortcut"):
      value = _dense_in(values[0])
    elif kind == "qkv":
      value = np.concatenate([_dense_in(v) if np.ndim(v) == 2 else _copy(v) for v in values],
                             axis=-1)
    else:
      value = _copy(values[0])
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  unused = sorted(set(state_dict) - used)
  if unused:
    raise ValueError(f"the state dict has weights diffax's U-Net does not use: {unused[:5]}"
                     + (" ..." if len(unused) > 5 else ""))
  return params


def unet_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, Any]
                        ) -> tuple[Callable, dict]:
  """A diffusers UNet2DModel as a diffax model.

  Args:
    config: the model's config as a dict (`dict(model.config)`, or its config.json).
    state_dict: `{name: numpy array}`, as `{k: v.numpy() for k, v in
      model.state_dict().items()}` or a safetensors file gives.

  Returns:
    `(apply_fn, params)`: `apply_fn(params, x_t, t, cond=None)` on NHWC `x_t` and `i32[B]` t
    equals the diffusers model's output (transposed to NHWC); a model with class embeddings
    reads `cond={"label": i32[B]}`.

  Raises:
    ValueError: an option or weight diffax's U-Net does not have, named.
  """
  arch = unet_config(config)
  model = models.create("unet", **arch)
  params = convert_unet2d(state_dict, arch)
  return model.apply_fn, params


def unet_to_diffusers(arch: Mapping[str, Any], params) -> tuple[dict, dict]:
  """A diffax U-Net as a diffusers UNet2DModel: `(config, state_dict)` for
  `UNet2DModel(**config).load_state_dict(...)` (or a config.json + safetensors directory).

  Args:
    arch: the `diffax.models.create("unet", ...)` keywords (`sample_shape` included).
    params: its parameters (host or device arrays).

  Raises:
    ValueError: a U-Net UNet2DModel cannot express (ADM scale-shift, a non-square or non-image
      sample, head counts that differ by level), named.
  """
  arch = dict(arch)
  if arch.get("scale_shift", True):
    raise ValueError("scale_shift=True (ADM) has no UNet2DModel equivalent that diffax maps; "
                     "only the DDPM additive time embedding (scale_shift=False) converts")
  shape = tuple(arch["sample_shape"])
  if len(shape) != 3 or shape[0] != shape[1]:
    raise ValueError(f"UNet2DModel draws square images; sample_shape={shape} is not one")
  base, mult = arch["base_channels"], tuple(arch["channel_mult"])
  size, levels = shape[0], len(mult)
  attention = [size // 2**i in arch["attention_resolutions"] for i in range(levels)]
  attn_channels = {base * m for m, a in zip(mult, attention) if a} | {base * mult[-1]}
  heads = arch["num_heads"]
  head_dims = {c // heads for c in attn_channels}
  if heads != 1 and len(head_dims) != 1:
    raise ValueError(f"num_heads={heads} at attention levels of {sorted(attn_channels)} "
                     f"channels: UNet2DModel fixes the head size, not the head count")
  config = dict(
      sample_size=size, in_channels=shape[2], out_channels=shape[2],
      block_out_channels=tuple(base * m for m in mult),
      layers_per_block=arch["num_res_blocks"],
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
      attention_head_dim=None if heads == 1 else head_dims.pop(),
      norm_num_groups=arch["num_groups"], norm_eps=1e-6, dropout=arch.get("dropout", 0.0),
      act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1,
      resnet_time_scale_shift="default", add_attention=True, downsample_padding=1,
      num_class_embeds=arch["num_classes"] + 1 if arch.get("num_classes") else None)
  arch.setdefault("num_classes", 0)
  state_dict = {}
  for path, keys, kind in _weight_map(arch):
    value = params
    for name in path:
      value = value[name]
    value = np.asarray(value, np.float32)
    if kind == "conv":
      state_dict[keys[0]] = _conv_out(value)
    elif kind == "dense":
      state_dict[keys[0]] = np.ascontiguousarray(value.T)
    elif kind == "shortcut":
      state_dict[keys[0]] = np.ascontiguousarray(value.T[:, :, None, None])
    elif kind == "qkv":
      for key, part in zip(keys, np.split(value, 3, axis=-1)):
        state_dict[key] = np.ascontiguousarray(part.T if part.ndim == 2 else part)
    else:
      state_dict[keys[0]] = np.ascontiguousarray(value)
  return config, state_dict
