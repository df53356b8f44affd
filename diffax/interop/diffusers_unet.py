"""diffusers' U-Nets onto diffax's U-Net (`diffax.models.unet`), both ways.

Two diffusers classes describe networks that diffax's one U-Net builds:

  UNet2DModel           the DDPM U-Net of Ho et al. (google/ddpm-cifar10-32, -celebahq-256,
                        ...): diffax's `scale_shift=False`; an `AttnDownBlock2D` is a level with
                        self-attention.
  UNet2DConditionModel  Stable Diffusion 1.x / 2.x: a `CrossAttnDownBlock2D` is a level whose
                        blocks are followed by a cross-attention transformer
                        (`cross_attention_resolutions`, reading `cond["context"]`), the middle
                        block has only its transformer (`mid_attention=False`), the timestep
                        embedding is ADM's (`time_embedding="adm"`), the GroupNorm epsilon 1e-5,
                        and SD 2's heads have a fixed width (`head_channels`).

Block i of `block_out_channels` is diffax's level i (`base_channels * channel_mult[i]`);
diffusers' up blocks run from the lowest resolution. Options diffax's U-Net does not have raise
a ValueError naming the option. A config.json may omit options; the diffusers defaults apply
(`_DEFAULTS`).
"""

from typing import Any, Callable, Mapping

from diffax import models
from diffax.interop import weight_map

CONDITION_MODEL = "UNet2DConditionModel"
_DOWN = {"DownBlock2D": None, "AttnDownBlock2D": "self", "CrossAttnDownBlock2D": "cross"}
_UP = {"UpBlock2D": None, "AttnUpBlock2D": "self", "CrossAttnUpBlock2D": "cross"}
_BLOCKS = {"UNet2DModel": ({"DownBlock2D", "AttnDownBlock2D"}, {"UpBlock2D", "AttnUpBlock2D"}),
           CONDITION_MODEL: ({"DownBlock2D", "CrossAttnDownBlock2D"},
                             {"UpBlock2D", "CrossAttnUpBlock2D"})}
_TIME_EMBEDDINGS = {(False, 1): "ddpm", (True, 0): "adm"}  # (flip_sin_to_cos, freq_shift)

# diffusers' defaults of the options read here, for a config.json that omits them.
_DEFAULTS = {
    "UNet2DModel": dict(flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5, attention_head_dim=8,
                        norm_num_groups=32, layers_per_block=2, dropout=0.0, add_attention=True,
                        mid_block_type="UNetMidBlock2D", in_channels=3, out_channels=3),
    CONDITION_MODEL: dict(flip_sin_to_cos=True, freq_shift=0, norm_eps=1e-5,
                          attention_head_dim=8, norm_num_groups=32, layers_per_block=2,
                          dropout=0.0, mid_block_type="UNetMidBlock2DCrossAttn", in_channels=4,
                          out_channels=4, cross_attention_dim=1280,
                          transformer_layers_per_block=1, use_linear_projection=False),
}

# Options and the only value diffax's U-Net implements (checked when present and not None).
_REQUIRED = {
    "act_fn": "silu", "center_input_sample": False, "time_embedding_type": "positional",
    "class_embed_type": None, "downsample_type": "conv", "upsample_type": "conv",
    "attn_norm_num_groups": None, "resnet_time_scale_shift": "default",
    "downsample_padding": 1, "mid_block_scale_factor": 1, "time_embedding_dim": None,
    "num_attention_heads": None, "addition_embed_type": None, "time_cond_proj_dim": None,
    "timestep_post_act": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "attention_type": "default",
    "cross_attention_norm": None, "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "dual_cross_attention": False, "only_cross_attention": False,
    "mid_block_only_cross_attention": None, "reverse_transformer_layers_per_block": None,
    "projection_class_embeddings_input_dim": None, "class_embeddings_concat": False,
    "addition_time_embed_dim": None,
}


def _one(config, key, what):
  """An option that is an int or a list of equal ints (per block), as one int."""
  value = config[key]
  values = set(value) if isinstance(value, (list, tuple)) else {value}
  if len(values) != 1:
    raise ValueError(f"{what} option {key}={value!r} differs by block; diffax's U-Net uses one "
                     f"value for every level")
  return values.pop()


def _check_required(config, what):
  for key, want in _REQUIRED.items():
    value = config.get(key)
    if key == "only_cross_attention" and isinstance(value, (list, tuple)):
      value = any(value)
    if key == "mid_block_scale_factor" and value is not None:
      value = float(value)
    if value is not None and value != want:
      raise ValueError(f"{what} option {key}={value!r} is not supported by diffax's U-Net (it "
                       f"implements {key}={want!r})")


def unet_config(config: Mapping[str, Any]) -> dict:
  """The `diffax.models.create` keywords of a UNet2DModel or UNet2DConditionModel config.

  Raises:
    ValueError: naming the first option diffax's U-Net does not implement.
  """
  what = config.get("_class_name", "UNet2DModel")
  if what not in _DEFAULTS:
    raise ValueError(f"a {what} is not a U-Net diffax converts; it maps {sorted(_DEFAULTS)}")
  config = {**_DEFAULTS[what], **config}
  _check_required(config, what)
  flip, shift = bool(config["flip_sin_to_cos"]), int(config["freq_shift"])
  if (flip, shift) not in _TIME_EMBEDDINGS:
    raise ValueError(f"{what} options flip_sin_to_cos={flip}, freq_shift={shift} are not "
                     f"supported; diffax maps (False, 1) (DDPM) and (True, 0) (ADM, SD)")
  channels = tuple(int(c) for c in config["block_out_channels"])
  levels = weight_map.levels(channels, what)
  down, up = tuple(config["down_block_types"]), tuple(config["up_block_types"])
  down_ok, up_ok = _BLOCKS[what]
  unknown = [b for b in down if b not in down_ok] + [b for b in up if b not in up_ok]
  if unknown:
    raise ValueError(f"{what} block type(s) {unknown} are not supported; diffax maps "
                     f"{sorted(down_ok)} and {sorted(up_ok)}")
  attention = [_DOWN[b] for b in down]
  if [_UP[b] for b in reversed(up)] != attention:
    raise ValueError(f"{what} up_block_types={up} must mirror down_block_types={down} "
                     f"(attention at the same resolutions)")
  if config["in_channels"] != config["out_channels"]:
    raise ValueError(f"{what} in_channels={config['in_channels']} and out_channels="
                     f"{config['out_channels']} differ; diffax predicts the input's channels")
  size = config.get("sample_size")
  if size is None:
    raise ValueError(f"the {what} config has no sample_size; add it to config.json")
  size = (size, size) if isinstance(size, int) else tuple(size)
  resolutions = [size[0] // 2**i for i in range(len(channels))]
  arch = dict(
      sample_shape=(*size, int(config["in_channels"])),
      **levels,
      num_res_blocks=int(_one(config, "layers_per_block", what)),
      dropout=float(config["dropout"]),
      num_groups=int(config["norm_num_groups"]),
      norm_eps=float(config["norm_eps"]),
      time_embedding=_TIME_EMBEDDINGS[(flip, shift)],
      num_classes=int(config["num_class_embeds"]) - 1 if config.get("num_class_embeds") else 0,
      scale_shift=False,
      attention_resolutions=tuple(r for r, a in zip(resolutions, attention) if a == "self"))
  if what == CONDITION_MODEL:
    if config["mid_block_type"] != "UNetMidBlock2DCrossAttn":
      raise ValueError(f"{what} mid_block_type={config['mid_block_type']!r} is not supported; "
                       f"diffax maps 'UNetMidBlock2DCrossAttn'")
    arch.update(mid_attention=False, context_dim=int(_one(config, "cross_attention_dim", what)),
                transformer_depth=int(_one(config, "transformer_layers_per_block", what)),
                cross_attention_resolutions=tuple(
                    r for r, a in zip(resolutions, attention) if a == "cross"))
    # diffusers' historical naming: attention_head_dim holds the number of heads here.
    heads = config["attention_head_dim"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    attended = [i for i, a in enumerate(attention) if a] + [len(channels) - 1]
  else:
    if config["mid_block_type"] not in ("UNetMidBlock2D", None):
      raise ValueError(f"{what} mid_block_type={config['mid_block_type']!r} is not supported")
    arch["mid_attention"] = bool(config["add_attention"]) and config["mid_block_type"] is not None
    head_dim = config["attention_head_dim"]
    heads = [1 if head_dim is None else c // head_dim for c in channels]
    attended = [i for i, a in enumerate(attention) if a]
    attended += [len(channels) - 1] if arch["mid_attention"] else []
    if head_dim is not None and any(channels[i] % head_dim for i in attended):
      raise ValueError(f"{what} attention_head_dim={head_dim} does not divide the channels "
                       f"{[channels[i] for i in attended]} of its attention levels")
  arch.update(_heads([channels[i] for i in attended], [heads[i] for i in attended], what))
  return arch


def _heads(channels, heads, what) -> dict:
  """num_heads (the same count everywhere) or head_channels (the same width everywhere)."""
  if len(set(heads)) <= 1:
    return dict(num_heads=int(heads[0]) if heads else 1, head_channels=0)
  widths = {c // h for c, h in zip(channels, heads)}
  if len(widths) == 1 and all(c % h == 0 for c, h in zip(channels, heads)):
    return dict(num_heads=1, head_channels=int(widths.pop()))
  raise ValueError(f"{what} attention heads {heads} at channels {channels} have neither one "
                   f"count nor one width; diffax's U-Net uses num_heads or head_channels")


def _key(prefix: str, name: str) -> str:
  return f"{prefix}.{name}" if prefix else name


class Entries(weight_map.Entries):
  """The U-Net's weight map (`weight_map.Entries`) with its diffusers blocks."""

  def resnet(self, name, key, shortcut):
    self.conv((name, "conv1"), key + ".conv1")
    self.conv((name, "conv2"), key + ".conv2")
    self.norm((name, "norm1"), key + ".norm1")
    self.norm((name, "norm2"), key + ".norm2")
    self.dense((name, "temb_proj"), key + ".time_emb_proj")
    if shortcut:
      self.dense((name, "skip"), key + ".conv_shortcut", "shortcut")

  def transformer(self, path, key, depth, linear_projection=True):
    """diffusers' `Transformer2DModel` onto `attention.SpatialTransformer`: its proj_in and
    proj_out are Linear layers (SD 2's use_linear_projection) or 1x1 convs (SD 1), the same
    diffax kernel either way."""
    projection = "dense" if linear_projection else "shortcut"
    self.norm(path + ("norm",), _key(key, "norm"))
    self.dense(path + ("proj_in", "dense"), _key(key, "proj_in"), projection)
    for j in range(depth):
      block, b = path + (f"transformer_blocks_{j}",), _key(key, f"transformer_blocks.{j}")
      for n in ("norm1", "norm2", "norm3"):
        self.norm(block + (n,), f"{b}.{n}")
      for a in ("attn1", "attn2"):
        for n in "qkv":
          self.dense(block + (a, f"to_{n}"), f"{b}.{a}.to_{n}", bias=False)
        self.dense(block + (a, "to_out", "dense"), f"{b}.{a}.to_out.0")
      self.dense(block + ("ff", "proj", "dense"), f"{b}.ff.net.0.proj")
      self.dense(block + ("ff", "out", "dense"), f"{b}.ff.net.2")
    self.dense(path + ("proj_out", "dense"), _key(key, "proj_out"), projection)


def _weight_map(arch: dict, *, linear_projection: bool = True) -> Entries:
  """Every parameter of the diffax U-Net `arch` and its diffusers weights (`Entries`).

  Raises:
    ValueError: a level with both self-attention and a cross-attention transformer (a
      diffusers block has one `attentions` list).
  """
  entries = Entries()
  depth = arch.get("transformer_depth", 1)

  def attentions(name, key, self_attention, cross_attention):
    if self_attention and cross_attention:
      raise ValueError(f"diffax block {name.replace('@', 'attn')} has self-attention and a "
                       f"cross-attention transformer; a diffusers block has one (a text U-Net "
                       f"exports with attention_resolutions=() and mid_attention=False)")
    if self_attention:
      entries.attention(name.replace("@", "attn"), key)
    if cross_attention:
      entries.transformer((name.replace("@", "xattn"),), key, depth, linear_projection)

  base, mult = arch["base_channels"], arch["channel_mult"]
  levels, size = len(mult), arch["sample_shape"][0]
  cross = bool(arch.get("context_dim"))
  self_at = lambda level: size // 2**level in arch.get("attention_resolutions", ())
  cross_at = lambda level: cross and size // 2**level in arch.get(
      "cross_attention_resolutions", ())
  entries.conv(("conv_in",), "conv_in")
  entries.dense(("temb_dense0",), "time_embedding.linear_1")
  entries.dense(("temb_dense1",), "time_embedding.linear_2")
  if arch.get("num_classes"):
    entries.append((("label_embed", "embedding"), ("class_embedding.weight",), "vector"))
  channels, skips = base, [base]
  for level in range(levels):
    for i in range(arch["num_res_blocks"]):
      out = base * mult[level]
      entries.resnet(f"down_{level}_res_{i}", f"down_blocks.{level}.resnets.{i}",
                     channels != out)
      channels = out
      skips.append(channels)
      attentions(f"down_{level}_@_{i}", f"down_blocks.{level}.attentions.{i}", self_at(level),
                 cross_at(level))
    if level != levels - 1:
      entries.conv((f"down_{level}_downsample", "conv"),
                   f"down_blocks.{level}.downsamplers.0.conv")
      skips.append(channels)
  entries.resnet("mid_res_0", "mid_block.resnets.0", False)
  attentions("mid_@", "mid_block.attentions.0", arch.get("mid_attention", True), cross)
  entries.resnet("mid_res_1", "mid_block.resnets.1", False)
  for level in reversed(range(levels)):
    block = levels - 1 - level  # diffusers' up blocks run from the lowest resolution
    for i in range(arch["num_res_blocks"] + 1):
      out = base * mult[level]
      entries.resnet(f"up_{level}_res_{i}", f"up_blocks.{block}.resnets.{i}",
                     channels + skips.pop() != out)
      channels = out
      attentions(f"up_{level}_@_{i}", f"up_blocks.{block}.attentions.{i}", self_at(level),
                 cross_at(level))
    if level != 0:
      entries.conv((f"up_{level}_upsample", "conv"), f"up_blocks.{block}.upsamplers.0.conv")
  entries.norm(("norm_out",), "conv_norm_out")
  entries.conv(("conv_out",), "conv_out")
  return entries


def convert_unet2d(state_dict: Mapping[str, Any], arch: dict) -> dict:
  """diffusers U-Net weights -> the parameter tree of `models.create("unet", **arch)`.

  Raises:
    ValueError: a weight missing from the state dict, or one the U-Net does not use.
  """
  return weight_map.gather(state_dict, _weight_map(arch), what="U-Net")


def unet_from_diffusers(config: Mapping[str, Any], state_dict: Mapping[str, Any]
                        ) -> tuple[Callable, dict]:
  """A diffusers UNet2DModel or UNet2DConditionModel as a diffax model.

  Args:
    config: the model's config as a dict (`dict(model.config)` with `_class_name`, or its
      config.json).
    state_dict: `{name: numpy array}`, as `{k: v.numpy() for k, v in
      model.state_dict().items()}` or a safetensors file gives.

  Returns:
    `(apply_fn, params)`: `apply_fn(params, x_t, t, cond=None)` on NHWC `x_t` and `[B]` t
    equals the diffusers model's output (transposed to NHWC); a model with class embeddings
    reads `cond={"label": i32[B]}`, a UNet2DConditionModel `cond={"context":
    encoder_hidden_states}`.

  Raises:
    ValueError: an option or weight diffax's U-Net does not have, named.
  """
  arch = unet_config(config)
  model = models.create("unet", **arch)
  params = convert_unet2d(state_dict, arch)
  return model.apply_fn, params


def unet_to_diffusers(arch: Mapping[str, Any], params) -> tuple[dict, dict]:
  """A diffax U-Net as a diffusers UNet2DModel (unconditional or class-conditional) or, with
  `context_dim`, a UNet2DConditionModel: `(config, state_dict)` for
  `cls.from_config(config).load_state_dict(...)` (config["_class_name"] names the class).

  Args:
    arch: the `diffax.models.create("unet", ...)` keywords (`sample_shape` included).
    params: its parameters (host or device arrays).

  Raises:
    ValueError: a U-Net diffusers cannot express (ADM scale-shift, a non-square or non-image
      sample, head counts that differ by level, unCLIP or super-resolution inputs), named.
  """
  arch = dict(arch)
  if arch.get("scale_shift", True):
    raise ValueError("scale_shift=True (ADM) has no diffusers U-Net equivalent that diffax "
                     "maps; only the DDPM additive time embedding (scale_shift=False) converts")
  for key in ("embedding_dim", "embedding_tokens", "low_res_size"):
    if arch.get(key):
      raise ValueError(f"{key}={arch[key]}: diffax exports U-Nets without unCLIP or "
                       f"super-resolution inputs")
  shape = tuple(arch["sample_shape"])
  if len(shape) != 3 or shape[0] != shape[1]:
    raise ValueError(f"diffusers' 2-D U-Nets draw square images; sample_shape={shape} is not one")
  base, mult = arch["base_channels"], tuple(arch["channel_mult"])
  size, levels = shape[0], len(mult)
  channels = [base * m for m in mult]
  text = bool(arch.get("context_dim"))
  attention = [size // 2**i in arch.get("attention_resolutions", ()) for i in range(levels)]
  cross = [text and size // 2**i in arch.get("cross_attention_resolutions", ())
           for i in range(levels)]
  heads = [c // arch["head_channels"] if arch.get("head_channels") else arch.get("num_heads", 1)
           for c in channels]
  flip, shift = {v: k for k, v in _TIME_EMBEDDINGS.items()}[arch.get("time_embedding", "ddpm")]
  config = dict(
      sample_size=size, in_channels=shape[2], out_channels=shape[2],
      block_out_channels=tuple(channels), layers_per_block=arch["num_res_blocks"],
      norm_num_groups=arch["num_groups"], norm_eps=arch.get("norm_eps", 1e-6),
      dropout=arch.get("dropout", 0.0), act_fn="silu", time_embedding_type="positional",
      flip_sin_to_cos=flip, freq_shift=shift, resnet_time_scale_shift="default",
      downsample_padding=1,
      num_class_embeds=arch["num_classes"] + 1 if arch.get("num_classes") else None)
  if text:
    config.update(
        _class_name=CONDITION_MODEL,
        down_block_types=tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross),
        up_block_types=tuple("CrossAttnUpBlock2D" if c else "UpBlock2D"
                             for c in reversed(cross)),
        mid_block_type="UNetMidBlock2DCrossAttn", attention_head_dim=tuple(heads),
        cross_attention_dim=arch["context_dim"],
        transformer_layers_per_block=arch.get("transformer_depth", 1),
        use_linear_projection=True)
  else:
    mid = bool(arch.get("mid_attention", True))
    attended = [(c, h) for c, h, a in zip(channels, heads, attention) if a]
    attended += [(channels[-1], heads[-1])] if mid else []
    widths = {c // h for c, h in attended}
    if {h for _, h in attended} - {1} and len(widths) > 1:
      raise ValueError(f"num_heads={arch.get('num_heads')} at attention levels of "
                       f"{sorted({c for c, _ in attended})} channels: UNet2DModel fixes the "
                       f"head size, not the head count (use head_channels)")
    config.update(
        _class_name="UNet2DModel",
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=(None if all(h == 1 for _, h in attended)
                            else widths.pop()),
        add_attention=mid)
  arch.setdefault("num_classes", 0)
  return config, weight_map.scatter(params, _weight_map(arch))
