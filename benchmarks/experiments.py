"""One-off A/B experiments behind benchmarks/README.md's "what was tried" table.

Each experiment times two variants in alternating repetitions in one process and prints one
JSON line with both medians and their ratio. XLA flag experiments need a process per flag set:
see flags_ab.py.

  python benchmarks/experiments.py ynn scan_steps bf16 baked_params peer_layout group_norm \
      conv_forms remat attention saved_step
"""

import argparse
import json
import math
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from benchmarks import diffax_cases
from benchmarks import machine
from benchmarks import timing


def _report(name, what, times, per_call_units, note=""):
  a, b = list(times)
  record = {"bench": "experiment", "name": name, "what": what, "load_average":
            machine.load_average(), "note": note}
  for key in (a, b):
    record[key] = {"median_s": timing.median(times[key]), "per_unit_s":
                   timing.median(times[key]) / per_call_units[key],
                   "times_s": [round(t, 4) for t in times[key]]}
  record["speedup_b_over_a"] = timing.paired_ratio(
      [t / per_call_units[a] for t in times[a]], [t / per_call_units[b] for t in times[b]])
  print(json.dumps(record), flush=True)
  return record


def scan_steps(reps):
  """Several train steps per dispatch (lax.scan) vs one: time per image."""
  batch = 8
  cfg = diffax_cases.config("half", batch)
  one = diffax_cases.TrainStep(cfg)
  four = diffax_cases.TrainStep(cfg, steps_per_call=4)
  times = timing.interleave({"1 step/call": one, "4 steps/call": four}, reps=reps)
  return _report("scan_steps", f"train half batch {batch}", times,
                 {"1 step/call": batch, "4 steps/call": 4 * batch},
                 note=f"compile {one.compile_s:.1f} s vs {four.compile_s:.1f} s")


def bf16(reps):
  """bfloat16 compute (params f32) vs float32, DDIM sampling at batch 8."""
  cfg = diffax_cases.config("half")
  f32 = diffax_cases.Sampler(cfg, "ddim", 8, 5)
  b16 = diffax_cases.Sampler(cfg, "ddim", 8, 5, dtype="bfloat16")
  times = timing.interleave({"float32": f32, "bfloat16": b16}, reps=reps)
  return _report("bf16", "sample ddim-5 half batch 8", times, {"float32": 1, "bfloat16": 1})


def baked_params(reps):
  """Params closed over (XLA constants) vs traced through a Partial: compile time and speed."""
  from diffax import sampling
  from diffax.pipeline import build
  cfg = diffax_cases.config("half")
  traced = diffax_cases.Sampler(cfg, "ddim", 1, 10)
  init_fn, apply_fn = build.model(cfg)
  params = jax.jit(init_fn)(jax.random.key(0))
  schedule = build.schedule(cfg)
  model_fn = lambda x, t: apply_fn(params, x, t)
  run = jax.jit(lambda rng: sampling.sample(model_fn, schedule, (1, 32, 32, 3), rng,
                                            sampler="ddim", num_steps=10, clip_x0=True))
  start = time.perf_counter()
  baked = run.lower(jax.random.key(1)).compile()
  baked_compile = time.perf_counter() - start
  times = timing.interleave(
      {"traced (Partial)": traced,
       "baked constants": lambda: baked(jax.random.key(1)).block_until_ready()}, reps=reps)
  return _report("baked_params", "sample ddim-10 half batch 1", times,
                 {"traced (Partial)": 1, "baked constants": 1},
                 note=f"compile {traced.compile_s:.1f} s traced vs {baked_compile:.1f} s baked")


def peer_layout(reps):
  """The peer in NCHW (PyTorch's default) vs channels_last, train batch 32 and sample batch 8."""
  import torch
  from benchmarks import peer
  torch.set_num_threads(os.cpu_count())
  out = []
  times = timing.interleave({"NCHW": peer.TrainStep("half", 32),
                             "channels_last": peer.TrainStep("half", 32, channels_last=True)},
                            reps=reps)
  out.append(_report("peer_layout", "peer train half batch 32", times,
                     {"NCHW": 32, "channels_last": 32}))
  times = timing.interleave(
      {"NCHW": peer.Sampler("half", "ddim", 8, 5),
       "channels_last": peer.Sampler("half", "ddim", 8, 5, channels_last=True)}, reps=reps)
  out.append(_report("peer_layout", "peer sample ddim-5 half batch 8", times,
                     {"NCHW": 8, "channels_last": 8}))
  return out


def ynn(reps):
  """XLA:CPU's YNNPACK convolution fusions (its default) vs XLA's Eigen convolutions, per
  program through compiler options: train half batch 32, DDIM at batch 1 and 64."""
  out = []
  no_ynn = diffax_cases.NO_YNN
  cfg = diffax_cases.config("half", 32)
  a, b = diffax_cases.TrainStep(cfg), diffax_cases.TrainStep(cfg, compiler_options=no_ynn)
  times = timing.interleave({"YNN (default)": a, "no YNN": b}, reps=reps)
  out.append(_report("ynn", "train half batch 32", times, {"YNN (default)": 32, "no YNN": 32},
                     note=f"compile {a.compile_s:.1f} s vs {b.compile_s:.1f} s"))
  for batch, steps in ((1, 10), (64, 2)):
    cfg = diffax_cases.config("half")
    a = diffax_cases.Sampler(cfg, "ddim", batch, steps)
    b = diffax_cases.Sampler(cfg, "ddim", batch, steps, compiler_options=no_ynn)
    times = timing.interleave({"YNN (default)": a, "no YNN": b}, reps=reps)
    out.append(_report("ynn", f"sample ddim-{steps} half batch {batch}", times,
                       {"YNN (default)": batch, "no YNN": batch},
                       note=f"compile {a.compile_s:.1f} s vs {b.compile_s:.1f} s"))
  return out


def _torch_fwd_bwd(make_module, shape, reps):
  """Median seconds of forward + backward of a PyTorch module on an NCHW tensor (or None)."""
  try:
    import torch
  except ImportError:
    return None
  torch.set_num_threads(os.cpu_count())
  n, h, w, c = shape
  x = torch.randn(n, c, h, w, requires_grad=True)
  weights = torch.randn_like(make_module()(x))
  module = make_module()

  def call():
    (torch.nn.functional.silu(module(x)) * weights).sum().backward()
  return timing.median(timing.interleave({"torch": call}, reps=reps)["torch"])


def group_norm(reps):
  """GroupNorm + SiLU, forward and backward: Flax's module under autodiff vs diffax.models.ops
  (hand-written gradient, sums as ones-vector matmuls), and PyTorch's kernels for reference."""
  import flax.linen as nn
  import torch
  from diffax.models import ops
  out = []
  for shape in ((32, 32, 32, 64), (32, 16, 16, 128), (32, 32, 32, 192)):
    k = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(k[0], shape)
    weights = jax.random.normal(k[1], shape)
    c = shape[-1]
    flax_gn = lambda x, s, b: nn.GroupNorm(32).apply({"params": {"scale": s, "bias": b}}, x)
    ours = lambda x, s, b: ops.group_norm(x, s, b, 32)
    grads = {}
    for name, fn in (("flax", flax_gn), ("diffax.ops", ours)):
      loss = lambda x, s, b, fn=fn: jnp.sum(jax.nn.silu(fn(x, s, b)) * weights)
      g = jax.jit(jax.grad(loss, (0, 1, 2)))
      args = (x, jnp.ones(c), jnp.zeros(c))
      grads[name] = lambda g=g, args=args: jax.block_until_ready(g(*args))
    times = timing.interleave(grads, reps=reps)
    record = _report("group_norm", f"GroupNorm(32) + SiLU fwd+bwd {list(shape)}", times,
                     {"flax": 1, "diffax.ops": 1})
    peer = _torch_fwd_bwd(lambda c=c: torch.nn.GroupNorm(32, c), shape, reps)
    print(json.dumps({"bench": "experiment", "name": "group_norm", "what": record["what"],
                      "torch_median_s": peer}), flush=True)
    out.append(record)
  return out


def conv_forms(reps):
  """A 3x3 convolution, forward and backward, as XLA's convolution vs as im2col (the 9 shifted
  windows concatenated, then one matmul), at the network's largest shapes."""
  from jax import lax
  out = []

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def im2col(x, w):
    _, h, wd, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + wd] for i in range(3) for j in range(3)], -1)
    return jnp.einsum("nhwk,ko->nhwo", cols, w.reshape(9 * c, -1))

  for shape, cout in (((32, 32, 32, 64), 64), ((32, 16, 16, 128), 128)):
    x = jax.random.normal(jax.random.key(0), shape)
    w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout))
    cases = {}
    for name, fn in (("lax.conv", conv), ("im2col", im2col)):
      g = jax.jit(jax.value_and_grad(lambda x, w, fn=fn: jnp.sum(fn(x, w) ** 2), (0, 1)))
      cases[name] = lambda g=g: jax.block_until_ready(g(x, w))
    times = timing.interleave(cases, reps=reps)
    flops = 3 * 2 * 9 * math.prod(shape) * cout
    out.append(_report("conv_forms", f"3x3 conv fwd+bwd {list(shape)} -> {cout}", times,
                       {"lax.conv": 1, "im2col": 1},
                       note=f"{flops / 1e9:.2f} GFLOP per call (forward + 2 gradients)"))
  return out


def conv_peer(reps):
  """A 3x3 convolution, forward and both gradients, as XLA compiles it for diffax vs as PyTorch
  runs it for the peer (oneDNN), interleaved, at the half-width train step's shapes (batch
  32): what bounds the train step on the machine at hand."""
  import torch  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  out = []
  for shape, cout in (((32, 32, 32, 64), 64), ((32, 16, 16, 128), 128),
                      ((32, 8, 8, 128), 128)):
    x = jax.random.normal(jax.random.key(0), shape)
    w = 0.05 * jax.random.normal(jax.random.key(1), (3, 3, shape[-1], cout))
    grad = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2), (0, 1)))
    n, h, wd, c = shape
    xt = torch.randn(n, c, h, wd, requires_grad=True)
    layer = torch.nn.Conv2d(c, cout, 3, padding=1, bias=False)

    def torch_call(xt=xt, layer=layer):
      xt.grad = None
      layer.zero_grad(set_to_none=True)
      (layer(xt) ** 2).sum().backward()

    times = timing.interleave({"xla": lambda g=grad, x=x, w=w: jax.block_until_ready(g(x, w)),
                               "torch": torch_call}, reps=reps)
    flops = 3 * 2 * 9 * math.prod(shape) * cout
    out.append(_report("conv_peer", f"3x3 conv fwd+bwd {list(shape)} -> {cout}", times,
                       {"xla": 1, "torch": 1},
                       note=f"{flops / 1e9:.2f} GFLOP per call (forward + 2 gradients)"))
  return out


def remat(reps, batch=16):
  """The train step's time with `config.model.remat` "blocks" and "dots" against "none" (the
  price of the memory benchmarks/memory.py measures), half width."""
  steps = {}
  for policy in ("none", "blocks", "dots"):
    cfg = diffax_cases.config("half", batch)
    cfg.model.remat = policy
    steps[policy] = diffax_cases.TrainStep(cfg)
  times = timing.interleave(steps, reps=reps)
  return [_report("remat", f"train half batch {batch}", {k: times[k] for k in ("none", other)},
                  {"none": batch, other: batch},
                  note=f"compile {steps['none'].compile_s:.1f} s vs "
                       f"{steps[other].compile_s:.1f} s")
          for other in ("blocks", "dots")]


def saved_step(reps, batch=32):
  """The train step as `diffax.pipeline.train` runs it, loaded from its `jax.export` file
  (`diffax.pipeline.saved_step`), against the same step jitted directly: saving the step to skip
  tracing must cost nothing per step. Half width."""
  import tempfile
  from diffax.pipeline import parallel
  from diffax.pipeline import saved_step as saved
  cfg = diffax_cases.config("half", batch)
  steps = {"jitted": diffax_cases.TrainStep(cfg), "loaded": diffax_cases.TrainStep(cfg)}
  loaded = steps["loaded"]
  step = diffax_cases.make_step(cfg)[2]
  mesh = parallel.create_mesh(jax.devices()[:1])
  with tempfile.TemporaryDirectory() as directory:
    for _ in range(2):  # traced and saved, then loaded
      fn = saved.compile_train_step(lambda s, b, r, f: step(s, b, r), mesh, loaded.state,
                                    loaded.batch, loaded.rng, None,
                                    key=cfg.to_json_best_effort(sort_keys=True),
                                    directory=directory)
  loaded.compiled = lambda state, batch, rng: fn(state, batch, rng, None)
  times = timing.interleave(steps, reps=reps)
  return [_report("saved_step", f"train half batch {batch}", times,
                  {"jitted": batch, "loaded": batch})]


def attention(reps):
  """`attention_impl`: diffax's einsums vs `jax.nn.dot_product_attention(implementation="xla")`
  in `attention.multi_head_attention`, forward (sampling) and forward + backward (training),
  at the shapes of a 16x16 (and a 32x32) level's cross- and self-attention."""
  from diffax.models import attention as attention_lib
  out = []
  rng = jax.random.split(jax.random.key(0), 3)
  cases = (  # (what, batch, queries, keys, channels, heads, key mask)
      ("cross 16x16 <- 16 tokens", 32, 256, 16, 128, 4, True),
      ("self 16x16", 32, 256, 256, 128, 4, False),
      ("self 32x32", 8, 1024, 1024, 64, 1, False))
  for what, b, n, m, c, heads, masked in cases:
    q = jax.random.normal(rng[0], (b, n, c))
    k, v = jax.random.normal(rng[1], (2, b, m, c))
    mask = (jnp.arange(m) < m // 2)[None].repeat(b, 0) if masked else None
    for mode in ("forward", "forward+backward"):
      fns = {}
      for name, impl in (("diffax", None), ("xla", "xla")):
        f = lambda q, k, v, impl=impl: attention_lib.multi_head_attention(
            q, k, v, heads, mask, implementation=impl)
        g = jax.jit(f if mode == "forward" else jax.grad(
            lambda q, k, v, f=f: jnp.sum(f(q, k, v) ** 2), (0, 1, 2)))
        fns[name] = lambda g=g: jax.block_until_ready(g(q, k, v))
      times = timing.interleave(fns, reps=reps)
      out.append(_report("attention", f"{mode} {what}: q {[b, n, c]}, {heads} heads", times,
                         {"diffax": 1, "xla": 1}))
  return out + _attention_text_unet(reps)


def _attention_text_unet(reps, tokens=16):
  """The two attention_impls in the text U-Net of configs/mnist_text.py (cross-attention at
  14x14 and 7x7, 4 heads): a forward pass at its sampling batch, a gradient at batch 16."""
  import numpy as np
  from configs import mnist_text
  from diffax.pipeline import build
  cfg = mnist_text.get_config()
  nets = {}
  for impl in ("diffax", "xla"):
    cfg.model.attention_impl = impl
    nets[impl] = build.model(cfg)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.05, s.shape), jnp.float32),
                        jax.eval_shape(nets["diffax"].init_fn, jax.random.key(0)))
  out = []
  for mode, batch in (("forward", cfg.sample.batch_size), ("forward+backward", 16)):
    x = jnp.asarray(rng.normal(size=(batch, *nets["diffax"].sample_shape)), jnp.float32)
    t = jnp.arange(batch, dtype=jnp.int32) * 37 % 1000
    cond = {"context": jnp.asarray(rng.normal(size=(batch, tokens, cfg.model.context_dim)),
                                   jnp.float32),
            "context_mask": jnp.arange(tokens)[None].repeat(batch, 0) < tokens // 2}
    fns = {}
    for impl, net in nets.items():
      f = lambda p, net=net: net.apply_fn(p, x, t, cond)
      g = jax.jit(f if mode == "forward" else jax.grad(lambda p, f=f: jnp.mean(f(p) ** 2)))
      fns[impl] = lambda g=g: jax.block_until_ready(g(params))
    times = timing.interleave(fns, reps=reps)
    out.append(_report("attention", f"{mode} U-Net of configs/mnist_text.py, batch {batch}",
                       times, {"diffax": batch, "xla": batch}))
  return out


EXPERIMENTS = {"ynn": ynn, "scan_steps": scan_steps, "bf16": bf16, "baked_params": baked_params,
               "peer_layout": peer_layout, "conv_peer": conv_peer, "group_norm": group_norm,
               "conv_forms": conv_forms, "remat": remat, "attention": attention,
               "saved_step": saved_step}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="*", default=list(EXPERIMENTS),
                      help=f"experiments to run, of {sorted(EXPERIMENTS)}")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--xla_flags", default="",
                      help="XLA_FLAGS for the process (default: XLA's own; the ynn experiment "
                           "sets its option per program)")
  args = parser.parse_args()
  machine.prepend_xla_flags(args.xla_flags)
  print(json.dumps(machine.info(REPO)), flush=True)
  for name in args.names:
    EXPERIMENTS[name](args.reps)


if __name__ == "__main__":
  main()
