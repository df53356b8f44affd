"""Cross-attention: diffax's SpatialTransformer against diffusers' Transformer2DModel with the
same random weights (so Stable Diffusion's blocks can load into it), the mask and the null
condition, and the text-conditional U-Net that holds them. Runs in CI (diffusers in the test
extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import diffusers
from diffax import conditioning
from diffax import interop
from diffax import models
from diffax.models import attention

CHANNELS, HEADS, CONTEXT_DIM, GROUPS = 32, 4, 24, 8


def random_transformer(linear_projection, depth, seed=0):
  torch.manual_seed(seed)
  model = diffusers.Transformer2DModel(
      num_attention_heads=HEADS, attention_head_dim=CHANNELS // HEADS, in_channels=CHANNELS,
      num_layers=depth, cross_attention_dim=CONTEXT_DIM, norm_num_groups=GROUPS,
      use_linear_projection=linear_projection).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.3 * torch.randn_like(p))
      elif name.endswith("weight"):
        p.copy_(torch.randn_like(p) / np.sqrt(p[0].numel()))
      else:
        p.copy_(0.3 * torch.randn_like(p))
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("linear_projection, depth", [(False, 1), (True, 2)],
                         ids=["sd1_conv_proj", "sd2_linear_proj_depth2"])
def test_spatial_transformer_equals_diffusers(linear_projection, depth):
  model, state_dict = random_transformer(linear_projection, depth)
  params = interop.spatial_transformer_params(state_dict)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 6, CHANNELS)).astype(np.float32)  # non-square on purpose
  context = rng.normal(size=(3, 5, CONTEXT_DIM)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
  with torch.no_grad():
    want = model(torch.from_numpy(x).permute(0, 3, 1, 2), encoder_hidden_states=torch.from_numpy(
        context), encoder_attention_mask=torch.from_numpy(mask)).sample.permute(0, 2, 3, 1)
  for fast in (True, False):
    module = attention.SpatialTransformer(HEADS, GROUPS, depth, fast=fast)
    got = module.apply({"params": params}, x, context, mask)
    error = float(np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max())
    assert error < 1e-5, (fast, error)


def test_masked_tokens_and_the_null_sequence_are_ignored():
  module = attention.SpatialTransformer(HEADS, GROUPS, 1)
  apply = jax.jit(module.apply)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, CHANNELS)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(2, 6, CONTEXT_DIM)), jnp.float32)
  params = module.init(jax.random.key(0), x, context, jnp.ones((2, 6), bool))["params"]
  params = jax.tree.map(lambda p: p + 0.1, params)  # proj_out is zero at init
  mask = jnp.array([[1, 1, 0, 0, 0, 0], [0] * 6], bool)
  out = apply({"params": params}, x, context, mask)
  other = context.at[:, 2:].set(5.0)  # only masked tokens change
  np.testing.assert_allclose(apply({"params": params}, x, other, mask), out, atol=1e-6)
  # A sequence without real tokens: the context does not matter, whatever its length.
  empty = apply({"params": params}, x, jnp.zeros((2, 1, CONTEXT_DIM)), jnp.zeros((2, 1), bool))
  np.testing.assert_allclose(out[1], empty[1], atol=1e-5)
  assert float(jnp.abs(out[0] - apply({"params": params}, x, context * 0, mask)[0]).max()) > 1e-3


def test_text_unet_reads_the_context_and_declares_its_null():
  net = models.create("unet", sample_shape=(8, 8, 1), base_channels=16, channel_mult=(1, 2),
                      num_res_blocks=1, num_groups=8, num_heads=2, context_dim=CONTEXT_DIM,
                      cross_attention_resolutions=(8,))
  assert net.cond_keys == ("context", "context_mask")
  apply = jax.jit(net.apply_fn)
  params = jax.jit(net.init_fn)(jax.random.key(0))
  assert {"down_0_xattn_0", "mid_xattn", "up_0_xattn_0", "up_0_xattn_1"} <= set(params)
  assert not any("xattn" in k for k in params if k.startswith(("down_1", "up_1")))
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p + 0.5), params)  # no zero branch left
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  t = jnp.array([10, 500])
  context = jax.random.normal(jax.random.key(2), (2, 7, CONTEXT_DIM))
  cond = {"context": context, "context_mask": jnp.ones((2, 7), bool)}
  null = conditioning.nullify(cond, net.null_cond)
  assert null["context"].shape == (2, 7, CONTEXT_DIM) and not null["context_mask"].any()
  dropped = conditioning.drop(cond, net.null_cond, jnp.array([True, False]))
  np.testing.assert_array_equal(dropped["context"][0], context[0])
  reversed_ = dict(cond, context=context[::-1])
  conds = [cond, reversed_, null, dropped]  # one batch of 8: one compile
  out = apply(params, jnp.tile(x, (4, 1, 1, 1)), jnp.tile(t, 4),
              jax.tree.map(lambda *a: jnp.concatenate(a), *conds)).reshape(4, 2, 8, 8, 1)
  unconditional = apply(params, x, t)  # cond None: the null condition
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-3  # the context is read
  np.testing.assert_allclose(out[2], unconditional, atol=1e-5)
  np.testing.assert_allclose(out[3, 1], unconditional[1], atol=1e-5)
  np.testing.assert_allclose(out[3, 0], out[0, 0], atol=1e-5)
  with pytest.raises(ValueError, match=r"cond\['context'\] must be \[B, L, 24\]"):
    net.apply_fn(params, x, t, dict(cond, context=context[..., :10]))


@pytest.mark.parametrize("arch, expected", [
    (dict(cross_attention_resolutions=(8,)), "needs context_dim > 0"),
    (dict(context_dim=8, cross_attention_resolutions=(2,)), r"holds \[2\], not reached"),
    (dict(context_dim=8, num_heads=3), "num_heads=3 must divide"),
    (dict(low_res_size=3), "low_res_size=3 must divide the image size 8x8"),
    (dict(low_res_size=8), "low_res_size=8 must divide"),
])
def test_bad_conditioning_keywords_are_named(arch, expected):
  base = dict(sample_shape=(8, 8, 1), base_channels=16, channel_mult=(1, 2), num_groups=8)
  with pytest.raises(ValueError, match=expected):
    models.create("unet", **base, **arch)


# -------------------------------------------------------------------------------------------
# `attention_impl`: jax.nn.dot_product_attention (its "xla" implementation on CPU) computes the
# same function as diffax's einsums, the row without keys included.


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_dot_product_attention_equals_the_einsums_in_value_and_gradient(masked):
  rng = np.random.default_rng(3)
  q = rng.normal(size=(3, 5, 8)).astype(np.float32)
  k, v = rng.normal(size=(2, 3, 6, 8)).astype(np.float32)
  mask = np.array([[1, 1, 0, 0, 1, 0], [1] * 6, [0] * 6], bool) if masked else None
  attend = lambda impl: lambda q, k, v: attention.multi_head_attention(
      q, k, v, 2, mask, implementation=impl)
  ours, theirs = attend(None)(q, k, v), attend("xla")(q, k, v)
  np.testing.assert_allclose(theirs, ours, rtol=1e-6, atol=1e-6)
  if masked:  # nothing to attend to: zero, not the mean of the values
    np.testing.assert_array_equal(theirs[2], 0.0)
    assert float(np.abs(ours[:2]).min()) > 0
  cotangent = rng.normal(size=ours.shape).astype(np.float32)
  grads = lambda impl: jax.vjp(attend(impl), q, k, v)[1](cotangent)
  for name, a, b in zip("qkv", grads("xla"), grads(None)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_unet_gives_the_same_output_with_every_cpu_attention_impl():
  arch = dict(sample_shape=(8, 8, 1), base_channels=8, channel_mult=(1,), num_res_blocks=1,
              attention_resolutions=(8,), num_groups=4, num_heads=2, context_dim=CONTEXT_DIM)
  nets = [models.create("unet", attention_impl=impl, **arch) for impl in ("diffax", "xla")]
  rng = np.random.default_rng(4)
  params = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32),
                        jax.eval_shape(nets[0].init_fn, jax.random.key(0)))
  x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32)
  cond = {"context": rng.normal(size=(2, 3, CONTEXT_DIM)).astype(np.float32),
          "context_mask": np.array([[1, 0, 1], [0, 0, 0]], bool)}
  ours, theirs = jax.jit(lambda p: [n.apply_fn(p, x, jnp.array([5, 700]), cond)
                                    for n in nets])(params)
  assert float(np.abs(ours).max()) > 1e-2
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5 * float(np.abs(ours).max()))


def test_cudnn_attention_in_float32_or_off_a_gpu_is_refused_with_the_alternatives():
  arch = dict(sample_shape=(8, 8, 1), base_channels=16, num_groups=8, attention_impl="cudnn")
  with pytest.raises(ValueError, match=r"'cudnn' computes in bfloat16 or float16, not float32"):
    models.create("unet", **arch)
  if jax.default_backend() != "gpu":
    with pytest.raises(ValueError, match=r"attention_impl='cudnn' .* GPU only; .* 'xla'"):
      models.create("unet", dtype="bfloat16", **arch)
