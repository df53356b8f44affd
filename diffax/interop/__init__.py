"""Weights in from other ecosystems: plain `{name: numpy array}` state dicts, no torch needed.

  apply_fn, params = diffax.interop.unet_from_diffusers(dict(model.config), state_dict)
  encoder, params = diffax.interop.text_encoder_from_transformers(config, state_dict)
  params = diffax.interop.spatial_transformer_params(state_dict, "mid_block.attentions.0.")

The diffax network a checkpoint describes is built with `diffax.models` and the weights are
renamed and transposed onto it (NCHW -> NHWC, OIHW -> HWIO, [out, in] -> [in, out]).
Tests load the same weights into the reference implementation and into diffax and compare
outputs.
"""

from diffax.interop.diffusers_attention import spatial_transformer_params
from diffax.interop.diffusers_unet import unet_from_diffusers
from diffax.interop.transformers_text import text_encoder_from_transformers

__all__ = ["spatial_transformer_params", "text_encoder_from_transformers",
           "unet_from_diffusers"]
