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


def _conv(w):  # torch OIHW -> HWIO
  return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))


def _dense(w):  # torch [out, in] (or a 1x1 conv [out, in, 1, 1]) -> [in, out]
  w = np.asarray(w, np.float32)
  return w.reshape(w.shape[0], w.shape[1]).T


def _vector(w):
  return np.asarray(w, np.float32)


def convert_unet2d(state_dict: Mapping[str, Any], arch: dict) -> dict:
  """UNet2DModel weights -> the parameter tree of `models.create("unet", **arch)`."""
  sd = {k: v for k, v in state_dict.items()}
  used = set()

  def get(key):
    if key not in sd:
      raise ValueError(f"the UNet2DModel state dict has no {key!r}")
    used.add(key)
    return sd[key]

  def conv(prefix):
    return {"kernel": _conv(get(prefix + ".weight")), "bias": _vector(get(prefix + ".bias"))}

  def dense(prefix):
    return {"kernel": _dense(get(prefix + ".weight")), "bias": _vector(get(prefix + ".bias"))}

  def norm(prefix):
    return {"scale": _vector(get(prefix + ".weight")), "bias": _vector(get(prefix + ".bias"))}

  def resnet(prefix):
    p = {"norm1": norm(prefix + ".norm1"), "conv1": conv(prefix + ".conv1"),
         "temb_proj": dense(prefix + ".time_emb_proj"), "norm2": norm(prefix + ".norm2"),
         "conv2": conv(prefix + ".conv2")}
    if prefix + ".conv_shortcut.weight" in sd:
      p["skip"] = dense(prefix + ".conv_shortcut")
    return p

  def attention(prefix):
    q, k, v = (dense(f"{prefix}.to_{n}") for n in "qkv")
    return {"norm": norm(prefix + ".group_norm"),
            "qkv": {"kernel": np.concatenate([q["kernel"], k["kernel"], v["kernel"]], axis=1),
                    "bias": np.concatenate([q["bias"], k["bias"], v["bias"]])},
            "proj_out": dense(prefix + ".to_out.0")}

  params = {"conv_in": conv("conv_in"), "temb_dense0": dense("time_embedding.linear_1"),
            "temb_dense1": dense("time_embedding.linear_2")}
  if arch["num_classes"]:
    params["label_embed"] = {"embedding": _vector(get("class_embedding.weight"))}
  levels = len(arch["channel_mult"])
  size = arch["sample_shape"][0]
  for level in range(levels):
    attn = size // 2**level in arch["attention_resolutions"]
    for i in range(arch["num_res_blocks"]):
      params[f"down_{level}_res_{i}"] = resnet(f"down_blocks.{level}.resnets.{i}")
      if attn:
        params[f"down_{level}_attn_{i}"] = attention(f"down_blocks.{level}.attentions.{i}")
    if level != levels - 1:
      params[f"down_{level}_downsample"] = {
          "conv": conv(f"down_blocks.{level}.downsamplers.0.conv")}
  params["mid_res_0"] = resnet("mid_block.resnets.0")
  params["mid_attn"] = attention("mid_block.attentions.0")
  params["mid_res_1"] = resnet("mid_block.resnets.1")
  for level in range(levels):
    block = levels - 1 - level  # diffusers' up blocks run from the lowest resolution
    attn = size // 2**level in arch["attention_resolutions"]
    for i in range(arch["num_res_blocks"] + 1):
      params[f"up_{level}_res_{i}"] = resnet(f"up_blocks.{block}.resnets.{i}")
      if attn:
        params[f"up_{level}_attn_{i}"] = attention(f"up_blocks.{block}.attentions.{i}")
    if level != 0:
      params[f"up_{level}_upsample"] = {"conv": conv(f"up_blocks.{block}.upsamplers.0.conv")}
  params["norm_out"] = norm("conv_norm_out")
  params["conv_out"] = conv("conv_out")
  unused = sorted(set(sd) - used)
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
