"""Tests of the U-Net: shapes, conditioning, dropout, parameter counts of every shipped config,
validation, the fast-layer and plain paths, and that it can fit a fixed batch. Its internals
are checked against diffusers in test_interop_diffusers.py.

Compiles are the cost here (XLA:CPU), so one tiny model is compiled once and shared, other
shapes are checked with `jax.eval_shape`, and random params come from numpy.
"""

import importlib
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10_ddpm
from diffax import models
from diffax.pipeline import build


TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(),
            num_heads=2, dropout=0.0, num_groups=4, scale_shift=True)


def arch(size=8, channels=1, **overrides):
  """`models.create` keywords: the tiny test network, overridden."""
  return dict(TINY, sample_shape=(size, size, channels), **overrides)


def cifar_arch(width="full", **overrides):
  """The network of configs/cifar10_ddpm.py (`half`: its half-width variant)."""
  config = cifar10_ddpm.get_config("half" if width == "half" else None)
  return dict(build_arch(config), **overrides)


def build_arch(config):
  m = config.model
  return dict(sample_shape=build.sample_shape(config),
              **{k: v for k, v in m.items() if k not in ("name", "dtype", "fast_layers")})


def perturb(params, seed=1, scale=0.1):
  """Params plus N(0, scale^2) noise, so zero-initialised layers stop hiding their inputs.

  Numpy, so nothing compiles; `jax.eval_shape` structs become random params.
  """
  rng = np.random.default_rng(seed)
  base = lambda p: (np.zeros(p.shape, np.float32) if isinstance(p, jax.ShapeDtypeStruct)
                    else np.asarray(p))
  return jax.tree_util.tree_map(
      lambda p: base(p) + scale * rng.standard_normal(p.shape, dtype=np.float32), params)


def inputs(kw, batch=2, seed=0):
  x = jax.random.normal(jax.random.key(seed), (batch, *kw["sample_shape"]))  # [B, H, W, C]
  t = jnp.arange(batch, dtype=jnp.int32) * 337 % 1000  # [B]
  return x, t


def labels(*values):
  return {"label": jnp.array(values, jnp.int32)}


def ddpm_reference_count(kw):
  """Parameters of the DDPM reference U-Net (diffusion_tf/models/unet.py), counted by hand.

  Independent of the Flax code: it walks the same architecture layer by layer. With
  scale_shift, each block's time projection is twice as wide (ADM).
  """
  m = types.SimpleNamespace(**{"num_classes": 0, **kw})
  ch, (res, _, in_ch) = m.base_channels, m.sample_shape
  emb = 4 * ch
  k = 2 if m.scale_shift else 1
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
  kw = arch(num_classes=3, dropout=0.5)
  model = models.create(**kw)
  params = jax.jit(model.init_fn)(jax.random.key(0, impl="rbg"))
  evaluate = jax.jit(lambda p, x, t, cond: model.apply_fn(p, x, t, cond))
  train = jax.jit(lambda p, x, t, cond, rng: model.apply_fn(p, x, t, cond, train=True, rng=rng))
  return kw, model, params, evaluate, train


def test_output_shape_dtype_and_zero_init(tiny):
  kw, _, params, evaluate, _ = tiny
  x, t = inputs(kw)
  out = evaluate(params, x, t, labels(0, 1))
  assert out.shape == x.shape and out.dtype == jnp.float32
  # DDPM / ADM zero-initialise the output conv: the untrained model predicts exactly zero.
  np.testing.assert_array_equal(out, 0.0)
  out = evaluate(perturb(params), x, t, labels(0, 1))
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-3
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
  assert models.count_params(params) == ddpm_reference_count(kw)


def test_examples_are_independent_and_time_matters(tiny):
  kw, _, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(kw)
  cond = labels(0, 1)
  out = evaluate(params, x, t, cond)
  # Nothing mixes examples (GroupNorm is per example): changing example 0 leaves example 1.
  changed = evaluate(params, x.at[0].multiply(-2.0), t, cond)
  assert not np.allclose(changed[0], out[0], atol=1e-4)
  np.testing.assert_allclose(changed[1], out[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(evaluate(params, x, t + 500, cond), out, atol=1e-4)


def test_labels_change_the_output(tiny):
  kw, _, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(kw)
  outs = [evaluate(params, x, t, labels(k, k)) for k in range(kw["num_classes"] + 1)]
  for i in range(len(outs)):
    for j in range(i):
      assert not np.allclose(outs[i], outs[j], atol=1e-4), (i, j)


def test_the_null_condition_is_the_null_label_and_none(tiny):
  kw, model, params, evaluate, _ = tiny
  params = perturb(params)
  x, t = inputs(kw)
  k = kw["num_classes"]
  assert model.null_cond == {"label": k} and model.cond_keys == ("label",)
  assert params["label_embed"]["embedding"].shape[0] == k + 1
  null = evaluate(params, x, t, labels(k, k))
  np.testing.assert_allclose(jax.jit(model.apply_fn)(params, x, t), null, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(evaluate(params, x, t, {}), null, rtol=1e-6, atol=1e-6)


def test_dropout_only_in_training(tiny):
  kw, model, params, evaluate, train = tiny
  params = perturb(params)
  x, t = inputs(kw)
  cond = labels(0, 1)
  key = lambda seed: jax.random.key(seed, impl="rbg")  # see `tiny`: compiles faster
  a = train(params, x, t, cond, key(1))
  assert not np.allclose(a, train(params, x, t, cond, key(2)), atol=1e-4)
  np.testing.assert_array_equal(a, train(params, x, t, cond, key(1)))
  assert not np.allclose(evaluate(params, x, t, cond), a, atol=1e-4)
  with pytest.raises(ValueError, match="dropout"):
    model.apply_fn(params, x, t, cond, train=True)


def test_bfloat16_compute_keeps_float32_params_and_output(tiny):
  kw, _, params, evaluate, _ = tiny
  apply_bf16 = models.create(**kw, dtype="bfloat16").apply_fn
  params = perturb(params)
  x, t = inputs(kw)
  ref = evaluate(params, x, t, labels(0, 1))
  out = jax.jit(apply_bf16)(params, x, t, labels(0, 1))
  assert out.dtype == jnp.float32
  assert not np.array_equal(out, ref)  # really computed in bfloat16 ...
  np.testing.assert_allclose(out, ref, atol=0.1 * float(jnp.max(jnp.abs(ref))))  # ... and close


def test_plain_layers_give_the_fast_layers_values_and_gradients(tiny):
  """The backend switch (hand-written gradients on CPU, JAX's autodiff elsewhere) changes how
  XLA computes, never what: same parameters, outputs and gradients."""
  kw, model, params, _, _ = tiny
  plain = models.create(**kw, fast_layers=False)
  assert jax.tree.structure(jax.eval_shape(plain.init_fn, jax.random.key(0))) == (
      jax.tree.structure(params))
  params = perturb(params)
  x, t = inputs(kw)
  cond = labels(0, 2)
  loss = lambda apply: lambda p: jnp.sum(jnp.sin(apply(p, x, t, cond)))
  both = jax.jit(lambda p: [jax.value_and_grad(loss(m.apply_fn))(p) for m in (model, plain)])
  (v_fast, g_fast), (v_plain, g_plain) = both(params)
  np.testing.assert_allclose(v_fast, v_plain, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()) + 1e-7)
  assert models.fast_layers_default() == (jax.default_backend() == "cpu")


def test_overfits_a_fixed_batch(tiny):
  """150 Adam steps on one fixed (x_t, t, label, target) batch drive the MSE far down."""
  _, model, params, _, _ = tiny
  k1, k2 = jax.random.split(jax.random.key(42))
  x_t = jax.random.normal(k1, (4, 8, 8, 1))
  target = jax.random.normal(k2, (4, 8, 8, 1))
  t, cond = jnp.array([0, 250, 500, 999]), labels(0, 1, 2, 3)
  loss_fn = lambda p: jnp.mean(jnp.square(model.apply_fn(p, x_t, t, cond) - target))
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
  kw = arch(size=16, channels=3, attention_resolutions=(16, 8), scale_shift=False)
  model = models.create(**kw)
  params = perturb(jax.eval_shape(model.init_fn, jax.random.key(0)), scale=0.05)
  assert "down_0_attn_0" in params and "up_1_attn_1" in params
  assert params["mid_res_0"]["temb_proj"]["kernel"].shape == (64, 32)  # additive: no 2x
  x, t = inputs(kw)
  out = jax.jit(model.apply_fn)(params, x, t)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)) and float(jnp.std(out)) > 1e-3
  assert models.count_params(params) == ddpm_reference_count(kw)


@pytest.mark.parametrize("size, channels, mult, attn", [
    (8, 1, (1, 2), ()), (16, 3, (1, 2, 2), (8,)), (32, 3, (1, 2, 2), (16,)), (32, 4, (1,), (32,))])
def test_output_shape_at_other_sizes(size, channels, mult, attn):
  kw = arch(size=size, channels=channels, channel_mult=mult, attention_resolutions=attn)
  model = models.create(**kw)
  shapes = jax.eval_shape(model.init_fn, jax.random.key(0))
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  out = jax.eval_shape(model.apply_fn, shapes, x, jax.ShapeDtypeStruct((2,), jnp.int32))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert models.count_params(shapes) == ddpm_reference_count(kw)


# -------------------------------------------------------------------------------------------
# Parameter counts of every shipped config (shapes only: no memory, no compile).

SHIPPED = [("cifar10_ddpm", None, 35_746_307), ("cifar10_ddpm", "half", 8_952_067),
           ("digits", None, 755_009), ("digits_cond", None, 756_417), ("mnist", None, None)]


@pytest.mark.parametrize("name, variant, count", SHIPPED,
                         ids=[f"{n}:{v}" if v else n for n, v, _ in SHIPPED])
def test_every_shipped_config_builds_its_documented_network(name, variant, count):
  config = importlib.import_module(f"configs.{name}").get_config(variant)
  kw = build_arch(config)
  n = models.count_params(jax.eval_shape(build.model(config).init_fn, jax.random.key(0)))
  assert n == ddpm_reference_count(kw)
  if count is not None:
    assert n == count, n


def test_the_ddpm_config_is_the_papers_network():
  """Ho et al. 2020: 35.7M parameters, the time embedding added to the features (no ADM
  scale-shift, which would make it 38.3M)."""
  config = cifar10_ddpm.get_config()
  assert config.model.scale_shift is False
  n = models.count_params(jax.eval_shape(build.model(config).init_fn, jax.random.key(0)))
  assert n == 35_746_307 and abs(n - 35.7e6) / 35.7e6 < 0.01
  shift = cifar_arch(scale_shift=True)
  n_shift = models.count_params(jax.eval_shape(models.create(**shift).init_fn,
                                               jax.random.key(0)))
  assert n_shift == ddpm_reference_count(shift) == 38_307_203


# -------------------------------------------------------------------------------------------
# Validation: bad input fails before anything is traced, naming the keyword.

BAD = [
    (dict(name="dit"), "model name"),
    (dict(num_groups=3), "num_groups"),
    (dict(attention_resolutions=(2,)), "attention_resolutions"),
    (dict(size=10, channel_mult=(1, 2, 2)), "divisible"),
    (dict(num_heads=3, attention_resolutions=(8,)), "num_heads"),
    (dict(dropout=1.0), "dropout"),
    (dict(dtype="float8"), "dtype"),
    (dict(num_classes=-1), "num_classes"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_fail_early_naming_the_keyword(overrides, match):
  size = overrides.pop("size", 8)
  name = overrides.pop("name", "unet")
  with pytest.raises(ValueError, match=match):
    models.create(name, **arch(size=size, **overrides))


def test_the_pipeline_names_the_config_field():
  config = cifar10_ddpm.get_config("smoke")
  config.model.num_groups = 3
  with pytest.raises(ValueError, match=r"config\.model: num_groups=3"):
    build.model(config)


def test_bad_inputs_are_named():
  model = models.create(**arch())
  params = jax.eval_shape(model.init_fn, jax.random.key(0))
  t = jax.ShapeDtypeStruct((2,), jnp.int32)
  x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
  with pytest.raises(ValueError, match="sample_shape"):
    model.apply_fn(params, jnp.zeros((2, 16, 16, 1)), t)
  with pytest.raises(ValueError, match="does not read"):  # labels, unconditional
    jax.eval_shape(model.apply_fn, params, x, t, {"label": t})
  with pytest.raises(ValueError, match="dict"):  # the old calling convention
    jax.eval_shape(model.apply_fn, params, x, t, t)


# -------------------------------------------------------------------------------------------
# ADM's scale-shift against its formula (Dhariwal & Nichol 2021, sec. 3: GroupNorm(h)(1 + s) + b).


def test_scale_shift_resblock_matches_adm_formula():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from diffax.models import layers  # pylint: disable=g-import-not-at-top
  block = layers.ResBlock(8, num_groups=4, scale_shift=True)
  k = jax.random.split(jax.random.key(3), 2)
  x = jax.random.normal(k[0], (2, 4, 4, 8))
  emb = jax.random.normal(k[1], (2, 12))
  params = perturb(block.init(jax.random.key(0), x, emb, train=False)["params"], scale=0.3)

  def gn(p, h):
    return nn.GroupNorm(4, epsilon=1e-6).apply({"params": p}, h)

  def conv(p, h):
    return jax.lax.conv_general_dilated(h, p["kernel"], (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

  h = conv(params["conv1"], jax.nn.silu(gn(params["norm1"], x)))
  e = jax.nn.silu(emb) @ params["temb_proj"]["kernel"] + params["temb_proj"]["bias"]
  scale, shift = e[:, None, None, :8], e[:, None, None, 8:]
  h = gn(params["norm2"], h) * (1 + scale) + shift
  want = x + conv(params["conv2"], jax.nn.silu(h))
  got = block.apply({"params": params}, x, emb, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
