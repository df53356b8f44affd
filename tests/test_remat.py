"""Activation checkpointing of the U-Net (`remat`): the same parameters, loss and gradients
under every policy, and less memory for a gradient in XLA's compiled memory analysis."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_ddpm
from diffax import models
from diffax.models import remat
from diffax.models import unet
from diffax.pipeline import build

POLICIES = ("blocks", "dots")

# Every kind of checkpointed block: residual (with dropout: `train` is static), self-attention
# and cross-attention with a key mask (one row without any key); fast layers (hand-written
# gradients) inside.
TINY = dict(sample_shape=(8, 8, 1), base_channels=8, channel_mult=(1,), num_res_blocks=1,
            attention_resolutions=(8,), num_groups=4, num_heads=2, dropout=0.2, context_dim=4)


def test_every_policy_gives_the_same_parameters_loss_and_gradients():
  nets = {r: models.create("unet", remat=r, fast_layers=True, **TINY)
          for r in ("none", *POLICIES)}
  shapes = {r: jax.eval_shape(n.init_fn, jax.random.key(0)) for r, n in nets.items()}
  assert all(s == shapes["none"] for s in shapes.values())  # same tree, shapes and dtypes
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        shapes["none"])  # zero-initialised layers would hide their inputs
  x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  t = np.array([3, 500], np.int32)
  cond = {"context": rng.normal(size=(2, 3, 4)).astype(np.float32),
          "context_mask": np.array([[1, 1, 0], [0, 0, 0]], bool)}

  def loss(net):  # dropout on: the recomputation must draw the same masks
    return lambda p: jnp.mean(jnp.sin(
        net.apply_fn(p, x, t, cond, train=True, rng=jax.random.key(5))))

  got = jax.jit(lambda p: {r: jax.value_and_grad(loss(n))(p) for r, n in nets.items()})(params)
  value, grads = got["none"]
  for policy in POLICIES:
    np.testing.assert_allclose(got[policy][0], value, rtol=1e-6, err_msg=policy)
    for a, b in zip(jax.tree.leaves(got[policy][1]), jax.tree.leaves(grads)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()) + 1e-9,
                                 err_msg=policy)


@functools.lru_cache(maxsize=None)
def grad_temp_bytes(policy: str) -> int:
  """XLA's temporary bytes for the gradient of a 16x16 U-Net's loss at batch 16 (compiled,
  never run): activations dominate them."""
  arch = dict(sample_shape=(16, 16, 3), base_channels=8, channel_mult=(1, 2),
              num_res_blocks=1, attention_resolutions=(8,), num_groups=4)
  net = models.create("unet", remat=policy, **arch)
  params = jax.eval_shape(net.init_fn, jax.random.key(0))
  x = jax.ShapeDtypeStruct((16, 16, 16, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((16,), jnp.int32)
  grad = jax.jit(jax.grad(lambda p, x, t: jnp.mean(net.apply_fn(p, x, t) ** 2)))
  return grad.lower(params, x, t).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("policy, at_most", [("blocks", 0.7), ("dots", 0.85)])
def test_remat_lowers_the_compiled_memory_of_a_gradient(policy, at_most):
  """Measured 12.0 MiB without remat, 6.5 MiB "blocks", 8.1 MiB "dots" (jax 0.10.2)."""
  none, ours = grad_temp_bytes("none"), grad_temp_bytes(policy)
  assert ours < at_most * none, (policy, ours, none)
  assert grad_temp_bytes("blocks") <= grad_temp_bytes("dots")  # it keeps the least


def test_the_tie_to_the_cotangent_changes_no_value():
  """What makes the recomputation wait for the backward pass is x + 0 * c (`remat.after`)."""
  x = {"a": jnp.arange(4.0), "n": jnp.arange(3)}
  for c in (jnp.array([2.0, 7.0]), jnp.array([jnp.nan, 1.0]), jnp.array([-jnp.inf])):
    tied = remat.after(x, c)
    np.testing.assert_array_equal(tied["a"], x["a"])
    assert tied["n"].dtype == x["n"].dtype


@pytest.mark.parametrize("arch, match", [
    (dict(remat="all"), r"remat='all' is unknown; choose one of \['none', 'blocks', 'dots'\]"),
    (dict(attention_impl="flash"), r"attention_impl='flash' is unknown"),
])
def test_bad_compute_keywords_are_named(arch, match):
  with pytest.raises(ValueError, match=match):
    models.create("unet", **dict(TINY, **arch))
  with pytest.raises(ValueError, match=match):  # the module alone checks them too
    jax.eval_shape(unet.UNet(**arch).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                   jnp.zeros((1,)))


def test_the_config_keys_reach_the_unet():
  config = cifar10_ddpm.get_config("smoke")
  assert (config.model.remat, config.model.attention_impl) == ("none", "xla")
  for key, value in (("remat", "everything"), ("attention_impl", "flash")):
    bad = cifar10_ddpm.get_config("smoke")
    bad.model[key] = value
    with pytest.raises(ValueError, match=rf"config\.model: {key}='{value}' is unknown"):
      build.model(bad)
