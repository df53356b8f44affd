"""diffax.models.ops and the layers built on it: the values and gradients of Flax's layers.

The hand-written gradients exist for speed alone (benchmarks/README.md), so every test here
compares against Flax's own modules differentiated by JAX, or against the definition.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax.models import layers
from diffax.models import ops


def _perturbed(params, seed):
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("shape", [(3, 8, 8, 16), (2, 12, 16), (2, 3, 4, 4, 8), (5, 16)],
                         ids=["2d", "1d", "3d", "no_spatial"])
def test_group_norm_matches_flax_in_value_and_gradient(shape, fast):
  k = jax.random.split(jax.random.key(0), 4)
  x = 3.0 * jax.random.normal(k[0], shape) + 1.5  # a mean far from 0 tests the variance form
  c = shape[-1]
  scale = 1 + 0.2 * jax.random.normal(k[1], (c,))
  bias = 0.2 * jax.random.normal(k[2], (c,))
  weights = jax.random.normal(k[3], shape)
  flax_gn = lambda x, s, b: nn.GroupNorm(4).apply({"params": {"scale": s, "bias": b}}, x)
  ours = lambda x, s, b: ops.group_norm(x, s, b, 4, fast=fast)
  # SiLU and a random weighting make the cotangent non-trivial in every element.
  loss = lambda f: lambda *a: jnp.sum(jax.nn.silu(f(*a)) * weights)
  both = jax.jit(lambda *a: [(f(*a), jax.grad(loss(f), (0, 1, 2))(*a)) for f in (ours, flax_gn)])
  (y, grads), (y_flax, grads_flax) = both(x, scale, bias)
  np.testing.assert_allclose(y, y_flax, atol=2e-6)
  for got, want in zip(grads, grads_flax):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_group_norm_normalises_each_group_of_each_example():
  x = jax.random.normal(jax.random.key(1), (4, 6, 6, 12)) * jnp.arange(1.0, 13.0) + 7.0
  y = jax.jit(ops.group_norm, static_argnums=(3, 4))(x, jnp.ones(12), jnp.zeros(12), 3, 0.0)
  groups = np.asarray(y).reshape(4, 36, 3, 4).transpose(0, 2, 1, 3).reshape(4, 3, -1)
  np.testing.assert_allclose(groups.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(groups.var(-1), 1.0, rtol=1e-4)


def test_group_norm_of_bfloat16_input_has_float32_statistics():
  x = (jax.random.normal(jax.random.key(2), (2, 4, 4, 8)) * 4 + 100).astype(jnp.bfloat16)
  y = ops.group_norm(x, jnp.ones(8), jnp.zeros(8), 2)
  assert y.dtype == jnp.float32
  want = nn.GroupNorm(2).apply({"params": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}},
                               x.astype(jnp.float32))
  np.testing.assert_allclose(y, want, atol=1e-4)


def test_group_norm_rejects_groups_that_do_not_divide_the_channels():
  with pytest.raises(ValueError, match="num_groups=3 .* 8 channels"):
    ops.group_norm(jnp.zeros((1, 2, 2, 8)), jnp.ones(8), jnp.zeros(8), 3)


def test_bias_gradient_is_the_sum_over_rows():
  x = jax.random.normal(jax.random.key(3), (2, 3, 5, 7))
  dy = jax.random.normal(jax.random.key(4), x.shape)
  _, vjp = jax.vjp(ops.add_bias, x, jnp.zeros(7))
  dx, db = vjp(dy)
  np.testing.assert_array_equal(dx, dy)
  np.testing.assert_allclose(db, dy.sum((0, 1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
@pytest.mark.parametrize("ours,theirs", [
    (lambda fast: layers.Dense(8, fast=fast), nn.Dense(8, kernel_init=layers.default_init)),
    (lambda fast: layers.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), fast=fast),
     nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
             kernel_init=layers.default_init)),
    (lambda fast: layers.GroupNorm(4, fast=fast), nn.GroupNorm(4)),
], ids=["dense", "conv", "group_norm"])
def test_layers_are_flax_layers_with_the_same_parameters(ours, theirs, fast):
  """Same parameter tree (checkpoints interchange), same values, same gradients, on the
  hand-written-gradient path (CPU) and the plain one (GPU, TPU)."""
  ours = ours(fast)
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 16))
  params = theirs.init(jax.random.key(6), x)
  assert (jax.tree.map(jnp.shape, ours.init(jax.random.key(6), x))
          == jax.tree.map(jnp.shape, params))
  params = _perturbed(params, 7)
  weights = jax.random.normal(jax.random.key(8), theirs.apply(params, x).shape)
  loss = lambda m: lambda p, x: jnp.sum(jnp.tanh(m.apply(p, x)) * weights)
  both = jax.jit(lambda p, x: [(m.apply(p, x), jax.grad(loss(m), (0, 1))(p, x))
                                for m in (ours, theirs)])
  (y, grads), (y_flax, grads_flax) = both(params, x)
  np.testing.assert_allclose(y, y_flax, atol=2e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_flax)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
