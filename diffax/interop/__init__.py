"""Weights in from other ecosystems: plain `{name: numpy array}` state dicts, no torch needed.

  apply_fn, params = diffax.interop.unet_from_diffusers(dict(model.config), state_dict)
  config, state_dict = diffax.interop.unet_to_diffusers(arch, params)   # and back out
  ae, params = diffax.interop.autoencoder_from_diffusers(dict(vae.config), state_dict)
  config, state_dict = diffax.interop.autoencoder_to_diffusers(arch, params)
  scale = diffax.interop.latent_scale_factor(dict(vae.config))  # its scaling_factor
  variables = diffax.interop.inception_from_torch(state_dict)   # pytorch-fid's FID Inception
  encoder, params = diffax.interop.text_encoder_from_transformers(config, state_dict)
  params = diffax.interop.spatial_transformer_params(state_dict, "mid_block.attentions.0.")

The diffax network a checkpoint describes is built with `diffax.models` and the weights are
renamed and transposed onto it (NCHW -> NHWC, OIHW -> HWIO, [out, in] -> [in, out]; one
`weight_map` list per network serves both directions). Mapped: diffusers' UNet2DModel,
UNet2DConditionModel and AutoencoderKL (Stable Diffusion's VAE), transformers' BERT and CLIP
text encoders (`model_type` "bert", "clip_text_model", "clip"). Tests load the same weights
into the reference implementation and into diffax and compare outputs.
"""

from diffax.interop.diffusers_attention import spatial_transformer_params
from diffax.interop.diffusers_unet import unet_from_diffusers
from diffax.interop.diffusers_unet import unet_to_diffusers
from diffax.interop.diffusers_vae import autoencoder_config
from diffax.interop.diffusers_vae import autoencoder_from_diffusers
from diffax.interop.diffusers_vae import autoencoder_to_diffusers
from diffax.interop.diffusers_vae import convert_autoencoder
from diffax.interop.diffusers_vae import latent_scale_factor
from diffax.interop.pytorch_fid import inception_from_torch
from diffax.interop.transformers_text import text_encoder_from_transformers

__all__ = ["autoencoder_config", "autoencoder_from_diffusers", "autoencoder_to_diffusers",
           "convert_autoencoder", "inception_from_torch", "latent_scale_factor",
           "spatial_transformer_params", "text_encoder_from_transformers",
           "unet_from_diffusers", "unet_to_diffusers"]
