"""The diffax side of each benchmark: a compiled sampler run and a compiled train step.

Each case is built once (compiled through `lower().compile()`, so the compile time and XLA's
cost analysis come with it) and then called as a blocking, argument-free callable, which is what
`timing.interleave` times.
"""

import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import limit
from configs import cifar10_ddpm
from diffax import models
from diffax import sampling
from diffax.pipeline import build
from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import state as train_state
from diffax.pipeline import step as train_step

# XLA:CPU compiler option that keeps convolutions out of YNNPACK fusions (XLA's Eigen
# convolutions instead); see README.
NO_YNN = {"xla_cpu_experimental_ynn_fusion_type": ""}

# Benchmark width name -> the variant of configs/cifar10_ddpm.py: the network users train.
# Half width is 8,952,067 parameters, full width DDPM's 35,746,307.
WIDTHS = {"half": "half", "full": None}


def config(width: str, batch_size: int = 128):
  """The DDPM CIFAR-10 config (linear schedule, T = 1000, Adam 2e-4, EMA) at `width`."""
  if width not in WIDTHS:
    raise ValueError(f"unknown width {width!r}; choose one of {sorted(WIDTHS)}")
  cfg = cifar10_ddpm.get_config(WIDTHS[width])
  cfg.train.batch_size = batch_size
  return cfg


class Sampler:
  """`diffax.sampling.sample` of one (sampler, batch, steps), with traced params.

  `compiler_options` are XLA debug options for this program alone (e.g.
  `NO_YNN`), where XLA_FLAGS would set them for the whole process.

  Attributes:
    compile_s: seconds to trace, lower and compile it (in this process; the persistent cache
      may or may not be on, see run.py).
    flops_per_eval: XLA's FLOPs for one model evaluation of the whole batch (None without
      `count_flops`).
    num_params: the model's parameter count.
  """

  def __init__(self, cfg, sampler: str, batch: int, steps: int, *, seed: int = 0,
               dtype: Optional[str] = None, compiler_options: Optional[dict] = None,
               count_flops: bool = True):
    init_fn, apply_fn = build.model(cfg, dtype=dtype)
    self.apply_fn = apply_fn
    self.params = jax.jit(init_fn)(jax.random.key(seed))
    self.num_params = models.count_params(self.params)
    schedule = build.schedule(cfg)
    size, channels = cfg.data.image_size, cfg.data.channels
    shape = (batch, size, size, channels)
    self.batch, self.steps = batch, steps
    self.rng = jax.random.key(seed + 1)

    def run(params, rng):
      # A Partial keeps the params traced (not baked in as constants), as a training loop's
      # periodic sampling would.
      model_fn = jax.tree_util.Partial(apply_fn, params)
      return sampling.sample(model_fn, schedule, shape, rng, sampler=sampler, num_steps=steps,
                             clip_x0=True)

    start = time.perf_counter()
    self.compiled = jax.jit(run).lower(self.params, self.rng).compile(compiler_options)
    self.compile_s = time.perf_counter() - start
    self.flops_per_eval = None
    if count_flops:  # a second program: one model evaluation, for XLA's FLOP count
      x = jnp.zeros(shape, jnp.float32)
      t = jnp.zeros((batch,), jnp.int32)
      forward = jax.jit(lambda p, x, t: apply_fn(p, x, t)).lower(self.params, x, t).compile()
      self.flops_per_eval = limit.flops(forward)

  def __call__(self):
    return self.compiled(self.params, self.rng).block_until_ready()


def _random_batch(cfg, batch: int, seed: int):
  rng = np.random.default_rng(seed)
  size, channels = cfg.data.image_size, cfg.data.channels
  return {"x": rng.uniform(-1, 1, (batch, size, size, channels)).astype(np.float32)}


def make_step(cfg, dtype: Optional[str] = None):
  """(init_fn, tx, step): the pure train step of `cfg` as diffax.pipeline.train wires it."""
  net = build.model(cfg, dtype=dtype)
  loss_fn = build.loss_fn(cfg, net, build.schedule(cfg))
  tx, lr_schedule = optim.create_optimizer(cfg)
  return net.init_fn, tx, train_step.make_train_step(loss_fn, tx, cfg, lr_schedule)


def scan_steps(step_fn, num_steps: int):
  """`num_steps` train steps in one dispatch: a `lax.scan` of `step_fn` over stacked batches."""

  def multi_step(state, batches, base_rng):
    def body(state, batch):
      return step_fn(state, batch, base_rng)
    state, metrics = jax.lax.scan(body, state, batches)
    return state, jax.tree.map(lambda m: m[-1], metrics)

  return multi_step


class TrainStep:
  """One train step (forward, backward, clip, Adam, EMA) through `diffax.parallel` on 1 device.

  With `steps_per_call` > 1, a call runs that many steps in one `lax.scan` dispatch over the
  same batch repeated (an experiment: it amortises dispatch; the library runs one per call).

  Attributes:
    compile_s: seconds to trace, lower and compile the step.
    flops: XLA's FLOPs of one call.
    images_per_call: batch * steps_per_call.
  """

  def __init__(self, cfg, *, seed: int = 0, steps_per_call: int = 1, donate: bool = True,
               dtype: Optional[str] = None, compiler_options: Optional[dict] = None):
    batch = cfg.train.batch_size
    init_fn, tx, step = make_step(cfg, dtype)
    mesh = parallel.create_mesh(jax.devices()[:1])
    self.state = parallel.create_sharded_state(
        functools.partial(train_state.create_train_state, init_fn, tx), mesh,
        jax.random.key(seed))
    self.num_params = models.count_params(self.state.params)
    host_batch = _random_batch(cfg, batch, seed)
    if steps_per_call > 1:
      step = scan_steps(step, steps_per_call)
      host_batch = jax.tree.map(lambda x: np.stack([x] * steps_per_call), host_batch)
      self.batch = jax.device_put(host_batch, parallel.replicated(mesh))
      jitted = jax.jit(step, donate_argnums=(0,) if donate else ())
    else:
      self.batch = parallel.shard_batch(host_batch, mesh)
      jitted = (parallel.compile_train_step(step, mesh) if donate
                else jax.jit(step))
    self.rng = parallel.replicate(jax.random.key(seed + 1), mesh)
    self.images_per_call = batch * steps_per_call
    start = time.perf_counter()
    self.compiled = jitted.lower(self.state, self.batch, self.rng).compile(compiler_options)
    self.compile_s = time.perf_counter() - start
    self.flops = limit.flops(self.compiled)
    if steps_per_call > 1:  # the scan body is counted once
      self.flops *= steps_per_call

  def __call__(self):
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    return jax.block_until_ready((self.state, metrics))
