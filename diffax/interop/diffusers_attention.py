"""diffusers' `Transformer2DModel` onto diffax's `attention.SpatialTransformer`.

Stable Diffusion's cross-attention blocks (the `attentions.i` of its CrossAttn down/up blocks
and its middle block) are Transformer2DModels with BasicTransformerBlocks; this renames one
block's weights onto diffax's parameters. SD 1's 1x1-conv proj_in/proj_out and SD 2's linear
ones load alike.
"""

from typing import Any, Mapping

from diffax.interop import diffusers_unet
from diffax.interop import weight_map


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
  depth = 0
  while f"{prefix}transformer_blocks.{depth}.norm1.weight" in state_dict:
    depth += 1
  if not depth:
    raise ValueError(f"the state dict has no {prefix}transformer_blocks.0")
  entries = diffusers_unet.Entries()
  entries.transformer((), prefix.rstrip("."), depth)
  return weight_map.gather(state_dict, entries, what="Transformer2DModel", exhaustive=False)
