"""Gradient accumulation and bf16 compute.

k accumulated micro-batches make the same update as one step on the whole batch: the step sees
the real diffusion loss (v-prediction, min-SNR weights, condition dropout), whose per-example draws
are keyed on each example's position in the global batch, so every example gets the same t,
noise and dropout coin however the batch is split. Only float rounding differs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits
from diffax import losses
from diffax import schedules
from diffax.pipeline import build
from diffax.pipeline import optim
from diffax.pipeline import parallel
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import step as train_step_lib
from diffax.pipeline import train

SCHEDULE = schedules.cosine(100)
BATCH, SIZE, FEATURES, NUM_CLASSES = 32, 4, 16, 10


def init_fn(rng):
  k = jax.random.split(rng, 4)
  return {"w_in": jax.random.normal(k[0], (1, FEATURES)),
          "freq": jax.random.uniform(k[1], (FEATURES,), maxval=0.1),
          "label": 0.1 * jax.random.normal(k[2], (NUM_CLASSES + 1, FEATURES)),
          "w_out": jax.random.normal(k[3], (FEATURES, 1)) / 4}


def apply_fn(params, x_t, t, cond=None, *, train=False, rng=None):
  """A per-pixel network conditioned on t and the label: per example, like the U-Net."""
  del train, rng
  label = jnp.full(t.shape, NUM_CLASSES) if cond is None else cond["label"]
  emb = jnp.sin(t[:, None] * params["freq"]) + params["label"][label]  # [B, F]
  return jnp.tanh(x_t @ params["w_in"] + emb[:, None, None, :]) @ params["w_out"]


def config():
  c = digits.get_config("smoke")
  c.optim.warmup_steps = 0  # the first update moves the params
  return c


def batches(num):
  rng = np.random.default_rng(0)
  return [{"x": rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 1)).astype(np.float32),
           "cond": {"label": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)}}
          for _ in range(num)]


def run(num_micro, mesh, num_steps=3):
  loss_fn = losses.make_loss_fn(apply_fn, SCHEDULE, prediction="v", weighting="min_snr",
                                null_cond={"label": NUM_CLASSES}, cond_dropout=0.3)
  tx, lr_schedule = optim.create_optimizer(config())
  step = parallel.compile_train_step(train_step_lib.make_train_step(
      loss_fn, tx, config(), lr_schedule, grad_accum_steps=num_micro), mesh)
  state = parallel.create_sharded_state(
      lambda rng: train_state_lib.create_train_state(init_fn, tx, rng), mesh, jax.random.key(0))
  rng = parallel.replicate(jax.random.key(1), mesh)
  metrics = []
  for batch in batches(num_steps):
    state, m = step(state, parallel.shard_batch(batch, mesh), rng)
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics, step


def test_accumulated_micro_batches_equal_one_big_batch():
  mesh = parallel.create_mesh()  # 8 devices: each micro-batch of 8 is 1 example per device
  whole, whole_metrics, _ = run(1, mesh)
  accumulated, accumulated_metrics, step = run(4, mesh)
  for w, a in zip(whole_metrics, accumulated_metrics):
    for key in ("loss", "mse", "grad_norm", "learning_rate"):
      np.testing.assert_allclose(a[key], w[key], rtol=1e-5, err_msg=key)
  assert whole_metrics[0]["loss"] != whole_metrics[1]["loss"]
  jax.tree.map(lambda a, w: np.testing.assert_allclose(a, w, rtol=1e-5, atol=1e-6),
               accumulated, whole)
  assert int(accumulated.step) == 3
  assert not np.allclose(whole.params["w_in"], init_fn(jax.random.key(0))["w_in"])
  # The strided split keeps each device's examples on it: only the gradient all-reduce.
  hlo = step.lower(*jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
      _placed_args(mesh))).compile().as_text()
  assert "all-to-all" not in hlo and "all-gather" not in hlo
  assert "all-reduce" in hlo


def _placed_args(mesh):
  tx, _ = optim.create_optimizer(config())
  state = parallel.create_sharded_state(
      lambda rng: train_state_lib.create_train_state(init_fn, tx, rng), mesh, jax.random.key(0))
  return (state, parallel.shard_batch(batches(1)[0], mesh),
          parallel.replicate(jax.random.key(1), mesh))


def test_micro_batches_are_strided_and_indexed():
  batch = {"x": np.arange(12.0).reshape(12, 1), "cond": {"label": np.arange(12)}}
  micro = train_step_lib.split_micro_batches(train_step_lib.with_index(batch), 3)
  np.testing.assert_array_equal(micro["index"], [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]])
  np.testing.assert_array_equal(micro["cond"]["label"], micro["index"])
  with pytest.raises(ValueError, match="grad_accum_steps=5"):
    train_step_lib.split_micro_batches(batch, 5)


def test_bf16_compute_keeps_float32_state_and_tracks_the_float32_loss():
  c = config()
  c.model.channel_mult = (1,)
  c.model.base_channels = 8
  c.model.dtype = "bfloat16"
  bf16, fp32 = build.model(c), build.model(c, dtype="float32")
  tx, lr_schedule = optim.create_optimizer(c)
  schedule = build.schedule(c)
  step = jax.jit(train_step_lib.make_train_step(
      build.loss_fn(c, bf16, schedule), tx, c, lr_schedule))
  state = train_state_lib.create_train_state(bf16.init_fn, tx, jax.random.key(0))
  assert {x.dtype for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)} == {
      jnp.dtype(jnp.float32)}
  batch = {"x": batches(1)[0]["x"][:16].repeat(2, 1).repeat(2, 2)}  # 8x8 digits size
  base_rng = jax.random.key(3)
  lowered = step.lower(state, batch, base_rng)
  assert "bf16" in lowered.as_text()  # bf16 really runs
  step = lowered.compile()
  new_state, _ = step(state, batch, base_rng)  # the output layer starts at 0: move it first
  newer_state, metrics = step(new_state, batch, base_rng)
  fp32_loss, _ = jax.jit(build.loss_fn(c, fp32, schedule))(
      new_state.params, train_step_lib.with_index(batch), jax.random.fold_in(base_rng, 1))
  assert metrics["loss"].dtype == jnp.float32
  np.testing.assert_allclose(metrics["loss"], fp32_loss, rtol=2e-2)
  assert float(metrics["loss"]) != float(fp32_loss)  # rounded differently, as bf16 does
  assert float(metrics["nonfinite"]) == 0.0
  for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(newer_state)):
    assert after.dtype == before.dtype
  assert not np.array_equal(jax.tree.leaves(newer_state.params)[0],
                            jax.tree.leaves(new_state.params)[0])


@pytest.mark.parametrize("key, value, match", [
    ("train.grad_accum_steps", 3, r"batch_size=16 must be a multiple of .*grad_accum_steps=3"),
    ("train.grad_accum_steps", 0, "grad_accum_steps must be an int >= 1"),
    ("model.dtype", "float16", "model.dtype"),
    ("train.nonfinite", "ignore", "train.nonfinite"),
])
def test_bad_scale_options_fail_before_anything_compiles(key, value, match):
  c = digits.get_config("smoke")
  c.update_from_flattened_dict({key: value})
  with pytest.raises(ValueError, match=match):
    train.check_loop_options(c, parallel.create_mesh())
