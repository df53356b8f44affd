"""The U-Net on 1-D, 2-D and 3-D data: one contract for every rank, factorized space-time
attention against its definition, the fast (XLA:CPU) and plain layers equal, and a checkpoint of
the 2-D-only U-Net (tests/data/unet2d_before_nd.npz) loading into today's network with the same
outputs.

Compiles dominate: each rank's tiny model is compiled once (module fixture) and shared.
"""

import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import models
from diffax.models import layers
from diffax.models import unet

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
import make_unet2d_fixture  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {"1d": (32, 2), "2d": (8, 8, 1), "3d": (3, 8, 8, 1)}
TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2, dropout=0.0,
            num_groups=4, num_classes=3, scale_shift=True)
# Attention at the first level too (the 1-D length 32, the 2-D height 8, the video frame
# height 8), so every rank's attention runs at two levels (plus the middle).
ATTENTION = {"1d": (32,), "2d": (8,), "3d": (8,)}


def perturb(tree, seed=1, scale=0.1):
  """Params plus N(0, scale^2) noise (numpy: nothing compiles), so zero-initialised layers
  stop hiding their inputs."""
  rng = np.random.default_rng(seed)
  base = lambda p: (np.zeros(p.shape, np.float32) if isinstance(p, jax.ShapeDtypeStruct)
                    else np.asarray(p))
  return jax.tree.map(lambda p: base(p) + scale * rng.standard_normal(p.shape, np.float32),
                      tree)


def reference_count(kw):
  """Parameters of the U-Net counted by hand, for any rank (independent of the Flax code):
  kernels have 3 taps per axis, a video conv is a 3x3 conv plus a [3, out, out] temporal
  kernel and bias, video attention is two blocks (space and time)."""
  shape = kw["sample_shape"]
  ndim, in_ch, ch = len(shape) - 1, shape[-1], kw["base_channels"]
  res = shape[1] if ndim == 3 else shape[0]
  emb, k = 4 * ch, 2 if kw["scale_shift"] else 1
  conv = lambda i, o: (9 * i * o + o + 3 * o * o + o) if ndim == 3 else 3**ndim * i * o + o
  norm = lambda c: 2 * c
  resblock = lambda i, o: (norm(i) + conv(i, o) + k * (emb * o + o) + norm(o) + conv(o, o)
                           + (i * o + o if i != o else 0))
  attn = lambda c: (2 if ndim == 3 else 1) * (norm(c) + 4 * (c * c + c))
  n = ch * emb + emb + emb * emb + emb + (kw["num_classes"] + 1) * emb + conv(in_ch, ch)
  skips, c, mult = [ch], ch, kw["channel_mult"]
  for level, m in enumerate(mult):
    for _ in range(kw["num_res_blocks"]):
      n += resblock(c, ch * m) + (attn(ch * m) if res in kw["attention_resolutions"] else 0)
      c = ch * m
      skips.append(c)
    if level != len(mult) - 1:
      n += conv(c, c)
      skips.append(c)
      res //= 2
  n += 2 * resblock(c, c) + attn(c)
  for level, m in reversed(list(enumerate(mult))):
    for _ in range(kw["num_res_blocks"] + 1):
      n += resblock(c + skips.pop(), ch * m)
      n += attn(ch * m) if res in kw["attention_resolutions"] else 0
      c = ch * m
    if level:
      n += conv(c, c)
      res *= 2
  return n + norm(c) + conv(c, in_ch)


@pytest.fixture(scope="module", params=list(SHAPES))
def ranked(request):
  """(keywords, model, perturbed params, jitted apply) of the tiny model of one rank."""
  rank = request.param
  kw = dict(TINY, sample_shape=SHAPES[rank], attention_resolutions=ATTENTION[rank])
  model = models.create("unet", **kw)
  params = jax.jit(model.init_fn)(jax.random.key(0, impl="rbg"))
  evaluate = jax.jit(lambda p, x, t, cond: model.apply_fn(p, x, t, cond))
  return kw, model, params, evaluate


def test_every_rank_obeys_the_same_contract(ranked):
  kw, model, params, evaluate = ranked
  shape = kw["sample_shape"]
  x = jax.random.normal(jax.random.key(0), (2, *shape))
  t, cond = jnp.array([3, 600]), {"label": jnp.array([0, 2])}
  # Zero-initialised output conv: the untrained model predicts exactly zero.
  np.testing.assert_array_equal(evaluate(params, x, t, cond), 0.0)
  assert models.count_params(params) == reference_count(kw)
  params = perturb(params)
  out = evaluate(params, x, t, cond)
  assert out.shape == x.shape and out.dtype == jnp.float32 and float(jnp.std(out)) > 1e-3
  # The plain layers (GPU, TPU) compute what the fast ones (XLA:CPU) do; their gradients are
  # compared layer by layer in test_ops.py and below (video convolutions).
  plain = models.create("unet", fast_layers=False, **kw)
  np.testing.assert_allclose(jax.jit(plain.apply_fn)(params, x, t, cond), out, rtol=1e-5,
                             atol=1e-5)
  # Examples stay independent (GroupNorm and attention are per example) ...
  changed = evaluate(params, x.at[0].multiply(-2.0), t, cond)
  assert not np.allclose(changed[0], out[0], atol=1e-4)
  np.testing.assert_allclose(changed[1], out[1], rtol=1e-5, atol=1e-6)
  # ... time and label both matter, and the null label is what cond=None means.
  assert not np.allclose(evaluate(params, x, t + 300, cond), out, atol=1e-4)
  assert not np.allclose(evaluate(params, x, t, {"label": jnp.array([1, 1])}), out, atol=1e-4)
  null = evaluate(params, x, t, {"label": jnp.array([3, 3])})
  np.testing.assert_allclose(evaluate(params, x, t, {}), null, rtol=1e-6, atol=1e-6)
  # A receptive field that spans the example: the first position moves the last one's output.
  first = (0,) * len(shape[:-1])
  far = evaluate(params, x.at[(0, *first)].add(3.0), t, cond)
  assert not np.allclose(far[(0, *(-1,) * len(shape[:-1]))], out[(0, *(-1,) * len(shape[:-1]))],
                         atol=1e-6)
  with pytest.raises(ValueError, match="sample_shape"):
    model.apply_fn(params, x[:, :-1], t, cond)  # one position short


def test_frame_conv_is_a_3x3x3_convolution_of_rank_one_in_time():
  """(2+1)-D: the spatial conv, then 3 taps along time, equal one 3x3x3 convolution whose
  kernel is their product, K[dt, dy, dx] = sum_m S[dy, dx, :, m] T[dt, m, :] (the biases
  folded in), here against XLA's 3-D convolution; and at init the temporal part is the
  identity."""
  b, frames, c_in, c_out = 2, 5, 3, 4
  x = jax.random.normal(jax.random.key(2), (b, frames, 8, 6, c_in))
  conv = layers.FrameConv(c_out, strides=(2, 2))
  params = conv.init(jax.random.key(3), x)["params"]
  np.testing.assert_array_equal(params["time_kernel"][1], np.eye(c_out))
  np.testing.assert_array_equal(params["time_kernel"][0], 0.0)
  params = perturb(params, scale=0.3)
  s, sb, tk, tb = (params[k] for k in ("kernel", "bias", "time_kernel", "time_bias"))
  kernel3d = np.einsum("yxim,tmo->tyxio", s, tk)  # [3, 3, 3, in, out]
  dims = ("NDHWC", "DHWIO", "NDHWC")
  want = jax.lax.conv_general_dilated(x, kernel3d, (1, 2, 2), ((1, 1), (1, 1), (1, 1)),
                                      dimension_numbers=dims)
  # The spatial bias goes through the temporal taps of the frames that exist (zero padding).
  present = np.ones((frames, 1))
  bias_in_time = sum(np.pad(present, ((1, 1), (0, 0)))[tap:tap + frames] * (sb @ tk[tap])
                     for tap in range(3))  # [T, out]
  want = want + bias_in_time[None, :, None, None, :] + tb
  for fast in (True, False):
    got = layers.FrameConv(c_out, strides=(2, 2), fast=fast).apply({"params": params}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_space_time_attention_is_attention_within_frames_then_across_frames():
  """Against its definition, written with einsum: GroupNorm over the whole clip, softmax over
  the H*W positions of each frame, then (on the result) over the T frames of each position."""
  b, frames, height, width, c, heads = 2, 3, 4, 4, 8, 2
  x = jax.random.normal(jax.random.key(3), (b, frames, height, width, c))
  block = layers.SpaceTimeAttention(num_heads=heads, num_groups=4)
  params = perturb(block.init(jax.random.key(4), x)["params"], scale=0.3)

  def reference(p, x, over_space):
    h = nn.GroupNorm(4, epsilon=1e-6).apply({"params": p["norm"]}, x)
    qkv = h @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    qkv = qkv.reshape(b, frames, height * width, 3, heads, c // heads)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, T, P, heads, d]
    scale = 1 / math.sqrt(c // heads)
    if over_space:
      w = jax.nn.softmax(jnp.einsum("btphd,btqhd->bthpq", q, k) * scale, axis=-1)
      o = jnp.einsum("bthpq,btqhd->btphd", w, v)
    else:
      w = jax.nn.softmax(jnp.einsum("btphd,bsphd->bphts", q, k) * scale, axis=-1)
      o = jnp.einsum("bphts,bsphd->btphd", w, v)
    o = o.reshape(x.shape) @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
    return x + o

  want = reference(params["time"], reference(params["space"], x, True), False)
  got = block.apply({"params": params}, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", list(make_unet2d_fixture.CASES))
def test_a_checkpoint_of_the_2d_unet_before_it_became_nd_loads_with_the_same_outputs(case):
  """tests/data/unet2d_before_nd.npz was written by the 2-D-only U-Net (commit 1db87a0): its
  parameter tree fits today's network exactly, and the same params and inputs give the same outputs."""
  kw = make_unet2d_fixture.CASES[case]
  with np.load(make_unet2d_fixture.PATH) as npz:
    saved = {k: npz[k] for k in npz.files if k.startswith(case + "/")}
  model = models.create("unet", **kw)
  params = {}
  prefix = f"{case}/params/"
  for key, value in saved.items():
    if key.startswith(prefix):
      node = params
      *parents, leaf = key[len(prefix):].split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = value
  shapes = jax.tree.map(lambda s: s.shape, jax.eval_shape(model.init_fn, jax.random.key(0)))
  assert jax.tree.map(np.shape, params) == shapes
  cond = {"label": saved[f"{case}/label"]} if f"{case}/label" in saved else None
  out = jax.jit(model.apply_fn)(params, saved[f"{case}/x"], saved[f"{case}/t"], cond)
  np.testing.assert_allclose(out, saved[f"{case}/out"], rtol=1e-5, atol=1e-5)


BAD = [
    (dict(sample_shape=(64,)), r"sample_shape must be \(L, C\) or \(H, W, C\) or \(T, H, W, C\)"),
    (dict(sample_shape=(2, 3, 8, 8, 1)), "sample_shape must be"),
    (dict(sample_shape=(18, 1), channel_mult=(1, 2, 2)),
     r"length L 18 must be divisible by 2\*\*\(len\(channel_mult\)-1\)=4"),
    (dict(sample_shape=(7, 12, 10, 1), channel_mult=(1, 2, 2)),
     r"frame size HxW 12x10 must be divisible"),
    (dict(sample_shape=(8, 8, 8, 1), attention_resolutions=(2,)),
     r"not reached .* resolutions are \[8, 4\] \(from the frame height 8"),
    (dict(sample_shape=(32, 1), attention_resolutions=(8,)),
     r"resolutions are \[32, 16\] \(from the length 32"),
]


@pytest.mark.parametrize("overrides, match", BAD, ids=[str(o["sample_shape"]) for o, _ in BAD])
def test_shapes_that_do_not_fit_fail_naming_the_keyword(overrides, match):
  kw = dict(TINY, attention_resolutions=())
  kw.update(overrides)
  with pytest.raises(ValueError, match=match):
    models.create("unet", **kw)


def test_video_keeps_its_frames_at_every_level():
  """Down/upsampling halves H and W, never T: an 8-frame clip at 16x16 runs 8 frames at 8x8."""
  assert unet.resampled_axes(3) == (2, 3) and unet.resampled_axes(1) == (1,)
  kw = dict(TINY, sample_shape=(5, 16, 16, 1), attention_resolutions=(8,))
  model = models.create("unet", **kw)
  shapes = jax.eval_shape(model.init_fn, jax.random.key(0))
  assert shapes["down_0_downsample"]["conv"]["kernel"].shape == (3, 3, 8, 8)  # (2+1)-D
  assert shapes["down_0_downsample"]["conv"]["time_kernel"].shape == (3, 8, 8)
  assert set(shapes["up_1_attn_0"]) == {"space", "time"} and "down_0_attn_0" not in shapes
  x = jax.ShapeDtypeStruct((2, 5, 16, 16, 1), jnp.float32)
  out = jax.eval_shape(model.apply_fn, shapes, x, jax.ShapeDtypeStruct((2,), jnp.int32),
                       {"label": jax.ShapeDtypeStruct((2,), jnp.int32)})
  assert out.shape == x.shape
