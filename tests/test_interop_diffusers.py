"""diffax's U-Net against diffusers' UNet2DModel and UNet2DConditionModel (Stable Diffusion's)
with the same random weights.

This is the reference check of the U-Net's internals: both timestep embeddings, the ResNet
blocks, attention (heads, 1/sqrt(d) scaling), the cross-attention transformers (SD 1's conv and
SD 2's linear projections, fixed head counts and fixed head widths), the down/up sampling, the
skip connections and the class embedding. (UNet2DModel's scale-shift variant drops the middle
attention's GroupNorm, which diffax's U-Net keeps; test_models checks scale-shift against its
formula.) Every weight is random (none left at its zero initialisation, which would hide a whole
branch), and the outputs must agree to float32 rounding. Runs in CI: torch and diffusers are in the test extra.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffusers
from diffax import interop

CONFIGS = {
    # The DDPM layout (google/ddpm-cifar10-32 at toy width): additive time embedding, attention
    # at the second level, one head.
    "ddpm": dict(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                 layers_per_block=2, norm_num_groups=4, norm_eps=1e-6,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
                 flip_sin_to_cos=False, freq_shift=1, resnet_time_scale_shift="default"),
    # 4-head attention at two levels, class labels, three levels.
    "classes_heads": dict(sample_size=8, in_channels=1, out_channels=1,
                        block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                        norm_eps=1e-6,
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                        attention_head_dim=8, flip_sin_to_cos=False, freq_shift=1,
                        resnet_time_scale_shift="default", num_class_embeds=5),
}


# Stable Diffusion's UNet2DConditionModel at toy width.
CONDITION_CONFIGS = {
    # SD 1.x: a fixed head count (attention_head_dim holds heads), 1x1-conv projections.
    "sd1": dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                layers_per_block=1, norm_num_groups=4,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
                attention_head_dim=2),
    # SD 2.x: fixed head width (heads 2, 4, 4 over 16, 32, 32 channels), linear projections,
    # two transformer blocks, three levels, class labels.
    "sd2_classes": dict(sample_size=8, in_channels=4, out_channels=4,
                        block_out_channels=(16, 32, 32), layers_per_block=2, norm_num_groups=8,
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                          "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D",
                                        "CrossAttnUpBlock2D"),
                        cross_attention_dim=24, attention_head_dim=(2, 4, 4),
                        use_linear_projection=True, transformer_layers_per_block=2,
                        upcast_attention=True, num_class_embeds=3),
}


def random_unet(config, seed=0, cls=diffusers.UNet2DModel):
  """A diffusers U-Net whose every weight is random, and its state dict as numpy."""
  torch.manual_seed(seed)
  model = cls(**config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p) / max(1.0, np.sqrt(p[0].numel() / 9)))
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unet2d_outputs_equal_diffusers(name):
  config = CONFIGS[name]
  model, state_dict = random_unet(config)
  apply_fn, params = interop.unet_from_diffusers(dict(model.config), state_dict)
  rng = np.random.default_rng(1)
  size, channels = config["sample_size"], config["in_channels"]
  x = rng.standard_normal((3, channels, size, size)).astype(np.float32)
  t = np.array([0, 417, 999])
  cond = None
  kwargs = {}
  if config.get("num_class_embeds"):
    labels = np.array([0, 3, 4])
    cond = {"label": jnp.asarray(labels)}
    kwargs["class_labels"] = torch.from_numpy(labels)
  with torch.no_grad():
    want = model(torch.from_numpy(x), torch.from_numpy(t), **kwargs).sample.numpy()
  got = jax.jit(apply_fn)(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), cond)
  want = want.transpose(0, 2, 3, 1)
  assert np.abs(want).max() > 0.1  # a real signal, not zeros
  assert relative_error(got, want) <= 1e-4, relative_error(got, want)


def test_unsupported_options_are_named():
  config = dict(CONFIGS["ddpm"], flip_sin_to_cos=True)
  model, state_dict = random_unet(config)
  with pytest.raises(ValueError, match="flip_sin_to_cos"):
    interop.unet_from_diffusers(dict(model.config), state_dict)
  with pytest.raises(ValueError, match="resnet_time_scale_shift"):
    interop.unet_from_diffusers(dict(CONFIGS["ddpm"], resnet_time_scale_shift="scale_shift"),
                                state_dict)
  with pytest.raises(ValueError, match="no 'conv_in.weight'"):
    interop.unet_from_diffusers(dict(CONFIGS["ddpm"]),
                                {k: v for k, v in state_dict.items() if k != "conv_in.weight"})


@pytest.mark.parametrize("name", sorted(CONDITION_CONFIGS))
def test_unet2d_condition_outputs_equal_diffusers(name):
  config = CONDITION_CONFIGS[name]
  model, state_dict = random_unet(config, cls=diffusers.UNet2DConditionModel)
  apply_fn, params = interop.unet_from_diffusers(
      dict(model.config, _class_name="UNet2DConditionModel"), state_dict)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
  t = np.array([3, 871])
  context = rng.standard_normal((2, 5, config["cross_attention_dim"])).astype(np.float32)
  kwargs, cond = {}, {"context": jnp.asarray(context)}
  if config.get("num_class_embeds"):
    labels = np.array([2, 0])
    kwargs["class_labels"] = torch.from_numpy(labels)
    cond["label"] = jnp.asarray(labels)
  with torch.no_grad():
    want = model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context),
                 **kwargs).sample.numpy().transpose(0, 2, 3, 1)
  got = jax.jit(apply_fn)(params, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), cond)
  assert np.abs(want).max() > 0.1
  assert relative_error(got, want) <= 1e-4, relative_error(got, want)
  # And out again: the same config and weights, exactly.
  arch = interop.diffusers_unet.unet_config(dict(model.config, _class_name="UNet2DConditionModel"))
  out_config, out_state = interop.unet_to_diffusers(arch, params)
  theirs = diffusers.UNet2DConditionModel.from_config(out_config).eval()
  theirs.load_state_dict({k: torch.from_numpy(v) for k, v in out_state.items()}, strict=True)
  with torch.no_grad():
    again = theirs(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(context),
                   **kwargs).sample.numpy().transpose(0, 2, 3, 1)
  assert relative_error(again, want) <= 1e-5
  assert interop.diffusers_unet.unet_config(dict(theirs.config, _class_name="UNet2DConditionModel")
                                            ) == arch


@pytest.mark.parametrize("change, expected", [
    (dict(addition_embed_type="text_time"), "addition_embed_type='text_time'"),
    (dict(attention_head_dim=(2, 3)), "neither one count nor one width"),
    (dict(transformer_layers_per_block=(1, 2)), "transformer_layers_per_block"),
    (dict(cross_attention_dim=(12, 16)), "cross_attention_dim"),
    (dict(down_block_types=("CrossAttnDownBlock2D", "AttnDownBlock2D")), "block type"),
    (dict(flip_sin_to_cos=False), "flip_sin_to_cos=False, freq_shift=0"),
])
def test_unsupported_condition_options_are_named(change, expected):
  config = dict(CONDITION_CONFIGS["sd1"], _class_name="UNet2DConditionModel", **change)
  with pytest.raises(ValueError, match=expected):
    interop.diffusers_unet.unet_config(config)
