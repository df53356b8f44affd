"""diffax's autoencoder against diffusers' AutoencoderKL (Stable Diffusion's VAE) with the same
random weights.

Encoding (the posterior's mean and log-variance) and decoding must agree to float32 rounding
for two layouts: three levels with two resnets per block and the middle attention (SD's VAE at
toy width), and two levels with one resnet, no middle attention and no quant convs. Every
weight is random (none left at 1 or 0, which would hide a swapped or dropped tensor). The
weights round-trip exactly both ways, and unsupported options fail with their name. Runs in CI:
torch and diffusers are in the test extra.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffusers
from diffax import interop

CONFIGS = {
    "sd": dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16, 16),
               down_block_types=("DownEncoderBlock2D",) * 3,
               up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, latent_channels=4,
               norm_num_groups=4, scaling_factor=0.13025),
    "small": dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                  latent_channels=2, norm_num_groups=4, mid_block_add_attention=False,
                  use_quant_conv=False, use_post_quant_conv=False),
}


def random_vae(config, seed=0):
  """An AutoencoderKL whose every weight is random, and its state dict as numpy."""
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKL(**config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(0.3 * torch.randn_like(p) / max(1.0, np.sqrt(p[0].numel() / 9)))
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def converted(request):
  """(config, diffusers model, its state dict, diffax autoencoder, params)."""
  config = CONFIGS[request.param]
  model, state_dict = random_vae(config)
  ae, params = interop.autoencoder_from_diffusers(dict(model.config), state_dict)
  return config, model, state_dict, ae, params


def test_encode_and_decode_equal_diffusers(converted):
  config, model, _, ae, params = converted
  rng = np.random.default_rng(1)
  size, channels = config["sample_size"], config["in_channels"]
  x = np.tanh(rng.standard_normal((2, channels, size, size))).astype(np.float32)
  z = rng.standard_normal((2, *ae.latent_shape)).astype(np.float32)  # NHWC
  with torch.no_grad():
    dist = model.encode(torch.from_numpy(x)).latent_dist
    want_mean, want_logvar = dist.mean.numpy(), dist.logvar.numpy()
    want_x = model.decode(torch.from_numpy(z.transpose(0, 3, 1, 2))).sample.numpy()
  mean, logvar = jax.jit(ae.encode)(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
  x_rec = jax.jit(ae.decode)(params, jnp.asarray(z))
  for got, want in ((mean, want_mean), (logvar, want_logvar), (x_rec, want_x)):
    want = want.transpose(0, 2, 3, 1)
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.1  # a real signal, not zeros
    assert relative_error(got, want) <= 1e-4, relative_error(got, want)


def test_weights_round_trip_exactly(converted):
  config, model, state_dict, _, params = converted
  arch = interop.autoencoder_config(dict(model.config))
  config_out, state_out = interop.autoencoder_to_diffusers(
      arch, params, scaling_factor=interop.latent_scale_factor(dict(model.config)))
  assert sorted(state_out) == sorted(state_dict)
  for key, value in state_dict.items():  # diffusers -> diffax -> diffusers
    np.testing.assert_array_equal(state_out[key], value, err_msg=key)
  assert interop.autoencoder_config(config_out) == arch
  assert config_out["scaling_factor"] == config.get("scaling_factor", 0.18215)
  back = interop.convert_autoencoder(state_out, arch)  # diffax -> diffusers -> diffax
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  diffusers.AutoencoderKL(**config_out).load_state_dict(  # diffusers reads it as it is
      {k: torch.from_numpy(v) for k, v in state_out.items()}, strict=True)


def test_legacy_attention_names_load():
  """Old checkpoints name the middle attention's weights query / key / value / proj_attn."""
  _, state_dict = random_vae(CONFIGS["sd"])
  legacy = {}
  for key, value in state_dict.items():
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                     (".to_out.0.", ".proj_attn.")):
      key = key.replace(new, old)
    legacy[key] = value
  assert "encoder.mid_block.attentions.0.proj_attn.weight" in legacy
  arch = interop.autoencoder_config(CONFIGS["sd"])
  jax.tree.map(np.testing.assert_array_equal, interop.convert_autoencoder(legacy, arch),
               interop.convert_autoencoder(state_dict, arch))


def test_unsupported_options_and_weights_are_named():
  config = CONFIGS["small"]
  with pytest.raises(ValueError, match="act_fn='relu' is not supported"):
    interop.autoencoder_config(dict(config, act_fn="relu"))
  with pytest.raises(ValueError, match="down_block_types=.*AttnDownEncoderBlock2D"):
    interop.autoencoder_config(dict(config, down_block_types=("DownEncoderBlock2D",
                                                              "AttnDownEncoderBlock2D")))
  with pytest.raises(ValueError, match="use_quant_conv=True with use_post_quant_conv=False"):
    interop.autoencoder_config(dict(config, use_quant_conv=True))
  with pytest.raises(ValueError, match="shift_factor=0.1159 is not supported"):
    interop.latent_scale_factor(dict(config, shift_factor=0.1159))
  assert interop.latent_scale_factor({}) == 0.18215
  _, state_dict = random_vae(config)
  arch = interop.autoencoder_config(config)
  with pytest.raises(ValueError, match="no 'decoder.conv_out.bias'"):
    interop.convert_autoencoder({k: v for k, v in state_dict.items()
                                 if k != "decoder.conv_out.bias"}, arch)
  with pytest.raises(ValueError, match=r"does not use: \['quant_conv.weight'\]"):
    interop.convert_autoencoder(dict(state_dict, **{"quant_conv.weight": np.zeros(1)}), arch)
  with pytest.raises(ValueError, match="downsample_padding='symmetric' has no AutoencoderKL"):
    interop.autoencoder_to_diffusers(dict(arch, downsample_padding="symmetric"), {})
