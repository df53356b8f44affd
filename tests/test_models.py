"""Tests of the U-Net: shapes, conditioning, dropout, parameter counts, validation, and that it
can fit a fixed batch.

Compiles are the cost here (XLA:CPU), so one tiny model is compiled once and shared, other
shapes are checked with `jax.eval_shape`, and random params come from numpy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import base_config
from diffax import models


def make_config(preset="tiny", size=8, channels=1, **model):
  """A locked base config with a preset and then `model` overrides applied."""
  c = base_config()
  c.lock()
  c.data.image_size, c.data.channels = size, channels
  models.apply_preset(c, preset)
  with c.model.unlocked():
    c.model.update(model)
  return c


def perturb(params, seed=1, scale=0.1):
  """Params plus N(0, scale^2) noise, so zero-initialised layers stop hiding their inputs.

  Numpy, so nothing compiles; `jax.eval_shape` structs become random params.
  """
  rng = np.random.default_rng(seed)
  base = lambda p: (np.zeros(p.shape, np.float32) if isinstance(p, jax.ShapeDtypeStruct)
                    else np.asarray(p))
  return jax.tree_util.tree_map(
      lambda p: base(p) + scale * rng.standard_normal(p.shape, dtype=np.float32), params)


def inputs(config, batch=2, seed=0):
  size, ch = config.data.image_size, config.data.channels
  x = jax.random.normal(jax.random.key(seed), (batch, size, size, ch))  # [B, H, W, C]
  t = jnp.arange(batch, dtype=jnp.int32) * 337 % 1000  # [B]
  return x, t


def labels(*values):
  return jnp.array(values, jnp.int32)


def ddpm_reference_count(config):
  """Parameters of the DDPM reference U-Net (diffusion_tf/models/unet.py), counted by hand.

  Independent of the Flax code: it walks the same architecture layer by layer. With
  scale_shift, each block's time projection is twice as wide (ADM).
  """
  m, ch, res = config.model, config.model.base_channels, config.data.image_size
  in_ch, emb = config.data.channels, 4 * config.model.base_channels
  k = 2 if m.get("scale_shift", True) else 1
  conv = lambda i, o: 9 * i * o + o
  norm = lambda c: 2 * c
  resblock = lambda i, o: (norm(i) + conv(i, o) + k * (emb * o + o) + norm(o) + conv(o, o)
                           + (i * o + o if i != o else 0))
  attn = lambda c: norm(c) + 4 * (c * c + c)  # q, k, v, proj_out
  n = ch * emb + emb + emb * emb + emb + ((m.num_classes + 1) * emb if m.num_classes else 0)
  n += conv(in_ch, ch)
  skips, c = [ch], ch
  for level, mult in enumerate(m.channel_mult):
    for _ in range(m.num_res_blocks):
      n += resblock(c, ch * mult) + (attn(ch * mult) if res in m.attention_resolutions else 0)
      c = ch * mult
      skips.append(c)
    if level != len(m.channel_mult) - 1:
      n += conv(c, c)
      skips.append(c)
      res //= 2
  n += 2 * resblock(c, c) + attn(c)
  for level, mult in reversed(list(enumerate(m.channel_mult))):
    for _ in range(m.num_res_blocks + 1):
      n += resblock(c + skips.pop(), ch * mult)
      n += attn(ch * mult) if res in m.attention_resolutions else 0
      c = ch * mult
    if level:
      n += conv(c, c)
      res *= 2
  return n + norm(c) + conv(c, in_ch)


# -------------------------------------------------------------------------------------------
# One tiny conditional model with dropout, compiled once and shared by the numeric tests.
# It is initialised from an "rbg" key: XLA:CPU compiles the threefry init of its ~90 tensors
# about three times slower, and init_fn takes any key.


@pytest.fixture(scope="module")
def tiny():
  config = make_config(num_classes=3, dropout=0.5)
  init_fn, apply_fn = models.create(config)
  params = jax.jit(init_fn)(jax.random.key(0, impl="rbg"))
  evaluate = jax.jit(lambda p, x, t, cond: apply_fn(p, x, t, cond))
  train = jax.jit(lambda p, x, t, cond, rng: apply_fn(p, x, t, cond, train=True, rng=rng))
  return config, apply_fn, params, evaluate, train


def test_output_shape_dtype_and_zero_init(tiny):
  config, _, params, evaluate, _ = tiny
  x, t = inputs(config)
  out = evaluate(params, x, t, labels(0, 1))
  assert out.shape == x.shape and out.dtype == jnp.float32
  # DDPM / ADM zero-initialise the output conv: the untrained model predicts exactly zero.
  np.testing.assert_array_equal(out, 0.0)
  out = evaluate(perturb(params), x, t, labels(0, 1))
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-3
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  assert models.count_params(params) == ddpm_reference_count(config)


def test_examples_are_independent_and_time_matters(tiny):
  config, _, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(config)
  cond = labels(0, 1)
  out = evaluate(params, x, t, cond)
  # Nothing mixes examples (GroupNorm is per example): changing example 0 leaves example 1.
  changed = evaluate(params, x.at[0].multiply(-2.0), t, cond)
  assert not np.allclose(changed[0], out[0], atol=1e-4)
  np.testing.assert_allclose(changed[1], out[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(evaluate(params, x, t + 500, cond), out, atol=1e-4)


def test_labels_change_the_output(tiny):
  config, _, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(config)
  outs = [evaluate(params, x, t, labels(k, k)) for k in range(config.model.num_classes + 1)]
  for i in range(len(outs)):
    for j in range(i):
      assert not np.allclose(outs[i], outs[j], atol=1e-4), (i, j)


def test_none_is_the_null_label(tiny):
  config, apply_fn, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(config)
  k = config.model.num_classes
  assert params["label_embed"]["embedding"].shape[0] == k + 1
  np.testing.assert_allclose(jax.jit(apply_fn)(params, x, t), evaluate(params, x, t, labels(k, k)),
                             rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training(tiny):
  config, apply_fn, params, evaluate, train = tiny
  params = perturb(params)
  x, t = inputs(config)
  cond = labels(0, 1)
  key = lambda seed: jax.random.key(seed, impl="rbg")  # see `tiny`: compiles faster
  a = train(params, x, t, cond, key(1))
  assert not np.allclose(a, train(params, x, t, cond, key(2)), atol=1e-4)
  np.testing.assert_array_equal(a, train(params, x, t, cond, key(1)))
  assert not np.allclose(evaluate(params, x, t, cond), a, atol=1e-4)
  with pytest.raises(ValueError, match="dropout"):
    apply_fn(params, x, t, cond, train=True)


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
  config, _, params, evaluate, _ = tiny
  _, apply_bf16 = models.create(config, dtype=jnp.bfloat16)
  params = perturb(params)
  x, t = inputs(config)
  ref = evaluate(params, x, t, labels(0, 1))
  out = jax.jit(apply_bf16)(params, x, t, labels(0, 1))
  assert out.dtype == jnp.float32
  assert not np.array_equal(out, ref)  # really computed in bfloat16 ...
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.max(jnp.abs(ref))))  # ... and close


def test_overfits_a_fixed_batch(tiny):
  """150 Adam steps on one fixed (x_t, t, label, target) batch drive the MSE far down."""
  _, apply_fn, params, _, _ = tiny
  k1, k2 = jax.random.split(jax.random.key(42))
  x_t = jax.random.normal(k1, (4, 8, 8, 1))
  target = jax.random.normal(k2, (4, 8, 8, 1))
  t, cond = labels(0, 250, 500, 999), labels(0, 1, 2, 3)
  loss_fn = lambda p: jnp.mean(jnp.square(apply_fn(p, x_t, t, cond) - target))
  tx = optax.adam(3e-3)

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), length=150)
    return losses[0], loss_fn(params)

  initial, final = map(float, fit(params))
  assert math.isfinite(final) and final < 0.1 * initial, (initial, final)


# -------------------------------------------------------------------------------------------
# Other resolutions, channel counts, attention levels and the DDPM additive time injection.


def test_16x16x3_additive_injection_with_attention_at_two_levels():
  config = make_config(size=16, channels=3, attention_resolutions=(16, 8), scale_shift=False)
  init_fn, apply_fn = models.create(config)
  params = perturb(jax.eval_shape(init_fn, jax.random.key(0)), scale=0.05)
  assert "down_0_attn_0" in params and "up_1_attn_1" in params
  assert params["mid_res_0"]["temb_proj"]["kernel"].shape == (64, 32)  # additive: no 2x
  x, t = inputs(config)
  out = jax.jit(apply_fn)(params, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-3
  assert models.count_params(params) == ddpm_reference_count(config)


@pytest.mark.parametrize("size, channels, mult, attn", [
    (8, 1, (1, 2), ()), (16, 3, (1, 2, 2), (8,)), (32, 3, (1, 2, 2), (16,)), (32, 4, (1,), (32,))])
def test_output_shape_at_other_sizes(size, channels, mult, attn):
  config = make_config(size=size, channels=channels, channel_mult=mult,
                       attention_resolutions=attn)
  init_fn, apply_fn = models.create(config)
  shapes = jax.eval_shape(init_fn, jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  out = jax.eval_shape(apply_fn, shapes, x, jax.ShapeDtypeStruct((2,), jnp.int32))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert models.count_params(shapes) == ddpm_reference_count(config)


# -------------------------------------------------------------------------------------------
# Parameter counts of the paper networks (shapes only: no memory, no compile).


@pytest.mark.parametrize("preset, paper", [("ddpm_cifar10", 35.7e6), ("ddpm_cifar10_half", 9.0e6)])
def test_preset_parameter_count(preset, paper):
  config = make_config(preset, size=32, channels=3)
  shapes = jax.eval_shape(models.create(config)[0], jax.random.key(0))
  n = models.count_params(shapes)
  assert n == ddpm_reference_count(config)
  assert abs(n - paper) / paper < 0.01, n


def test_scale_shift_widens_the_time_projections():
  config = make_config("ddpm_cifar10", size=32, channels=3, scale_shift=True)
  n = models.count_params(jax.eval_shape(models.create(config)[0], jax.random.key(0)))
  assert n == ddpm_reference_count(config) == 38_307_203  # 7 % over the paper: hence the flag


def test_apply_preset_sets_fields_on_a_locked_config():
  c = make_config("ddpm_cifar10", size=32, channels=3)
  assert c.model.base_channels == 128 and tuple(c.model.channel_mult) == (1, 2, 2, 2)
  assert c.model.scale_shift is False and c.model.dropout == 0.1
  with pytest.raises(ValueError, match="tiny"):
    models.apply_preset(c, "ddpm_imagenet")


# -------------------------------------------------------------------------------------------
# Validation: bad input fails before anything is traced, naming the field.

BAD_CONFIGS = [
    (dict(name="dit"), "config.model.name"),
    (dict(num_groups=3), "config.model.num_groups"),
    (dict(attention_resolutions=(2,)), "config.model.attention_resolutions"),
    (dict(size=10, channel_mult=(1, 2, 2)), "config.data.image_size"),
    (dict(num_heads=3), "config.model.num_heads"),
    (dict(dropout=1.0), "config.model.dropout"),
    (dict(dtype="float8"), "config.model.dtype"),
]


@pytest.mark.parametrize("overrides, field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_config_fails_early_naming_the_field(overrides, field):
  config = make_config(**overrides)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    models.create(config)


def test_bad_inputs_name_the_config_field():
  config = make_config()
  init_fn, apply_fn = models.create(config)
  params = jax.eval_shape(init_fn, jax.random.key(0))
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  with pytest.raises(ValueError, match=r"config\.data\.image_size"):
    apply_fn(params, jnp.zeros((2, 16, 16, 1)), t)
  with pytest.raises(ValueError, match=r"config\.model\.num_classes"):  # labels, unconditional
    jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32), t, t)
