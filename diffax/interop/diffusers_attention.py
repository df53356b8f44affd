"""diffusers' `Transformer2DModel` onto diffax's `attention.SpatialTransformer`.

Stable Diffusion's cross-attention blocks (the `attentions.i` of its CrossAttn down/up blocks
and its middle block) are Transformer2DModels with BasicTransformerBlocks; this renames one
block's weights onto diffax's parameters. SD 1's 1x1-conv proj_in/proj_out and SD 2's linear
ones load alike.
"""

from typing import Any, Mapping

import numpy as np


def spatial_transformer_params(state_dict: Mapping[str, Any], prefix: str = "") -> dict:
  """The `SpatialTransformer` parameters of the Transformer2DModel at `prefix` of a state dict.

  Args:
    state_dict: `{name: numpy array}`.
    prefix: the block's name in it, e.g. "down_blocks.0.attentions.0." ("" for a lone block).

  Returns:
    The parameter tree; its depth is the number of transformer_blocks found.

  Raises:
    ValueError: naming a missing weight.
  """
  def get(name):
    if prefix + name not in state_dict:
      raise ValueError(f"the state dict has no weight {prefix + name!r}")
    return np.asarray(state_dict[prefix + name], np.float32)

  def dense(name, bias=True):  # [out, in] or a 1x1 conv [out, in, 1, 1] -> [in, out]
    w = get(name + ".weight")
    kernel = w.reshape(w.shape[0], w.shape[1]).T
    return {"dense": {"kernel": kernel, "bias": get(name + ".bias")}} if bias else {
        "kernel": kernel}

  def norm(name):
    return {"scale": get(name + ".weight"), "bias": get(name + ".bias")}

  def attn(name):
    out = {f"to_{n}": dense(f"{name}.to_{n}", bias=False) for n in "qkv"}
    out["to_out"] = dense(f"{name}.to_out.0")
    return out

  params = {"norm": norm("norm"), "proj_in": dense("proj_in"), "proj_out": dense("proj_out")}
  depth = 0
  while f"{prefix}transformer_blocks.{depth}.norm1.weight" in state_dict:
    b = f"transformer_blocks.{depth}"
    params[f"transformer_blocks_{depth}"] = {
        "norm1": norm(b + ".norm1"), "attn1": attn(b + ".attn1"),
        "norm2": norm(b + ".norm2"), "attn2": attn(b + ".attn2"),
        "norm3": norm(b + ".norm3"),
        "ff": {"proj": dense(b + ".ff.net.0.proj"), "out": dense(b + ".ff.net.2")}}
    depth += 1
  if not depth:
    raise ValueError(f"the state dict has no {prefix}transformer_blocks.0")
  return params
