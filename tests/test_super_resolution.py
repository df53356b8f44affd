"""The super-resolution pieces of the library: the U-Net reading cond["low_res"] and
cond["noise_level"], the augmentation formula, and the pipeline's area downsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import conditioning
from diffax import models
from diffax.models import low_res as low_res_lib
from diffax.pipeline import conditions


def test_augment_low_res_is_variance_preserving():
  low = jnp.full((3, 2, 2, 1), 0.6)
  noise = jnp.ones_like(low)
  out = conditioning.augment_low_res(low, jnp.array([0.0, 0.6, 1.0]), noise)
  np.testing.assert_allclose(out[:, 0, 0, 0], [0.6, 0.8 * 0.6 + 0.6, 1.0], rtol=1e-6)


def test_area_downsampling_is_the_block_mean():
  x = np.arange(2 * 4 * 6 * 1, dtype=np.float32).reshape(2, 4, 6, 1)
  down = conditions.downsample(x, 2)
  assert down.shape == (2, 2, 3, 1)
  np.testing.assert_allclose(down[0, 0, 0, 0], np.mean([0, 1, 6, 7]))
  np.testing.assert_allclose(down[1, 1, 2, 0], np.mean(x[1, 2:4, 4:6]))


def test_bicubic_upsampling_keeps_constants_and_the_block_means_roughly():
  up = low_res_lib.upsample(jnp.full((1, 4, 4, 1), 0.3), (8, 8))
  np.testing.assert_allclose(up, 0.3, atol=1e-6)
  assert low_res_lib.low_res_shape((8, 16, 1), 4) == (4, 8, 1)


def test_sr_unet_reads_the_low_res_image_and_its_noise_level():
  net = models.create("unet", sample_shape=(8, 8, 1), base_channels=16, channel_mult=(1, 2),
                      num_res_blocks=1, num_groups=8, low_res_size=4)
  assert net.cond_keys == ("low_res", "noise_level") and net.null_cond == {}
  params = jax.jit(net.init_fn)(jax.random.key(0))
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p + 0.5), params)  # no zero branch
  apply = jax.jit(net.apply_fn)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  t = jnp.array([3, 400])
  low = jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
  out = apply(params, x, t, {"low_res": low, "noise_level": jnp.zeros(2)})
  assert float(jnp.abs(out - apply(params, x, t, {"low_res": -low, "noise_level": jnp.zeros(2)})
                   ).max()) > 1e-3
  assert float(jnp.abs(out - apply(params, x, t, {"low_res": low, "noise_level": jnp.ones(2)})
                   ).max()) > 1e-3
  np.testing.assert_allclose(apply(params, x, t, {"low_res": low}), out, atol=1e-6)  # level 0
  with pytest.raises(ValueError, match=r"needs cond\['low_res'\] of shape \[B, 4, 4, 1\].*got "
                                       r"shape \(2, 8, 8, 1\)"):
    net.apply_fn(params, x, t, {"low_res": x})
  with pytest.raises(ValueError, match=r"needs cond\['low_res'\].*got none"):
    net.apply_fn(params, x, t)
