"""Tests of the benchmark plumbing (not of speed): FLOP counting, timing order, the scanned
multi-step, the markdown table, and that the PyTorch peer is the same network as diffax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import diffax_cases
from benchmarks import limit
from benchmarks import table
from benchmarks import timing
from configs import common
from diffax import models
from diffax.pipeline import optim
from diffax.pipeline import state as train_state_lib
from diffax.pipeline import step as train_step_lib


def test_flops_of_a_matmul_is_two_m_n_k():
  m, k, n = 8, 16, 4
  compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
  assert limit.flops(compiled) == pytest.approx(2 * m * n * k)


def test_flops_count_a_scan_body_once():
  # run.py multiplies a sampler's per-evaluation FLOPs by its steps because of this.
  def looped(a, b):
    return jax.lax.scan(lambda c, _: (c @ b, None), a, None, length=10)[0]
  args = (jnp.ones((8, 8)), jnp.ones((8, 8)))
  once = limit.flops(jax.jit(jnp.matmul).lower(*args).compile())
  assert limit.flops(jax.jit(looped).lower(*args).compile()) == pytest.approx(once, rel=0.05)


def test_interleave_alternates_abba_and_respects_the_budget():
  calls = []
  cases = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
  times = timing.interleave(cases, reps=4, warmup=1, pause=0.0)
  assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
  assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4}
  slow = {"a": lambda: timing.time.sleep(0.02)}
  assert len(timing.interleave(slow, reps=50, budget_s=0.05, pause=0.0)["a"]) <= 2
  assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0


def _toy_step():
  config = common.base_config()
  config.optim.warmup_steps = 0
  config.optim.ema_decay = 0.5

  def loss_fn(params, batch, rng):
    noise = jax.random.normal(rng, batch["x"].shape)
    loss = jnp.mean((params["w"] - batch["x"] - 0.1 * noise) ** 2)
    return loss, {"loss": loss}

  tx, lr = optim.create_optimizer(config)
  init_fn = lambda rng: {"w": jax.random.normal(rng, (3,))}
  step = train_step_lib.make_train_step(loss_fn, tx, config, lr)
  return train_state_lib.create_train_state(init_fn, tx, jax.random.key(0)), step


def test_scanned_steps_equal_the_same_steps_one_by_one():
  state, step = _toy_step()
  batch = {"x": jnp.arange(6.0).reshape(2, 3)}
  rng = jax.random.key(1)
  one = jax.jit(step)
  expected = state
  for _ in range(3):
    expected, _ = one(expected, batch, rng)
  stacked = jax.tree.map(lambda x: jnp.stack([x] * 3), batch)
  got, metrics = jax.jit(diffax_cases.scan_steps(step, 3))(state, stacked, rng)
  assert int(got.step) == 3
  np.testing.assert_allclose(got.params["w"], expected.params["w"], rtol=1e-6)
  np.testing.assert_allclose(got.ema_params["w"], expected.ema_params["w"], rtol=1e-6)
  assert metrics["loss"].shape == ()


def _records():
  side = {"images_per_s": 2.0, "ms_per_step": 50.0, "gflops": 60.0, "frac_matmul": 0.5}
  return [
      {"bench": "machine", "cpu": "CPU", "cores": 2, "cpu_flags": ["avx2"], "jax": "0",
       "torch": "1", "diffusers": "2", "date": "today", "commit": "abc", "load_average": [1.0]},
      {"bench": "limit", "n": 64, "jax_gflops": 120.0, "torch_gflops": 100.0,
       "limit_gflops": 120.0},
      {"bench": "sampler", "sampler": "ddim", "width": "half", "batch": 1, "steps": 50,
       "diffax": side, "peer": dict(side, images_per_s=1.0), "ratio": 2.0,
       "target": ">= 2.0x"},
      {"bench": "train", "width": "half", "batch": 32, "diffax": {"images_per_s": 9.0},
       "peer": {"images_per_s": 6.0}, "peer_compiled": {"images_per_s": 7.5}, "ratio": 1.5,
       "ratio_compiled": 1.2, "ratio_best": 1.2},
      {"bench": "compile", "what": "train", "width": "half", "batch": 32, "cold_s": 20.0,
       "warm_s": 3.0, "target": "<= 30 s cold"},
      {"bench": "memory", "what": "train", "width": "half", "batch": 32,
       "diffax": {"import_mib": 300.0, "run_mib": 900.0, "peak_mib": 1500.0},
       "peer": {"import_mib": 400.0, "run_mib": 1200.0, "peak_mib": 1250.0}},
  ]


def test_markdown_table_has_one_row_per_measurement():
  text = table.markdown(_records())
  rows = [line for line in text.splitlines() if line.startswith("| ")]
  assert len(rows) == 1 + 3 + 1 + 1  # header + sampler, train, compile; header + memory
  assert "| sample ddim-50 | half, batch 1 | 2 img/s, 50 ms/step |" in text
  assert "| 2.00x | >= 2.0x | 60 (50 %) |" in text
  assert "cold 20 s, warm 3 s" in text
  # Two peers: the ratio shown is against the faster one (torch.compile here).
  assert "| 9 img/s | 6 img/s | 7.5 img/s | 1.20x |" in text
  assert "limit used: 120 GFLOP/s" in text
  assert "| train step | half, batch 32 | 900 / 1500 | 1200 / 1250 | - | 0.75x |" in text


def test_peak_memory_children_measure_each_side_alone():
  """A sampler case's resident memory, diffax and the eager peer each in a fresh process."""
  from benchmarks import peak_rss  # pylint: disable=g-import-not-at-top
  params_mib = 8_952_067 * 4 / 2**20  # the half-width network's float32 weights
  for side in ("diffax", "peer"):
    r = peak_rss.measure(side, "sampler", "half", 1)
    assert r["run_mib"] - r["import_mib"] > params_mib, (side, r)  # the model is resident
    assert r["import_mib"] < r["run_mib"] <= r["peak_mib"], (side, r)


def test_the_peer_is_the_network_users_train():
  """diffusers' model in the benchmark maps onto exactly configs/cifar10_ddpm.py's network
  (test_interop_diffusers checks that such a mapping computes the same function)."""
  from benchmarks import peer  # pylint: disable=g-import-not-at-top
  from diffax.interop import diffusers_unet  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import build  # pylint: disable=g-import-not-at-top
  # Half width only: building the 35.7M full-width peer takes many seconds; the widths share
  # every layer type, so equal counts at one width and equal code at both suffice.
  cfg = diffax_cases.config("half")
  theirs = peer.unet("half")
  arch = diffusers_unet.unet_config(dict(theirs.config))
  # UNet2DModel has no text or super-resolution inputs: the config must leave them off.
  conditions = {"context_dim": 0, "cross_attention_resolutions": (), "transformer_depth": 1,
                "low_res_size": 0}
  assert {k: cfg.model[k] for k in conditions} == conditions
  how = ("name", "dtype", "fast_layers", "remat", "attention_impl")  # not the architecture
  ours = {k: v for k, v in cfg.model.items() if k not in (*how, *conditions)}
  assert arch.pop("sample_shape") == build.sample_shape(cfg)
  assert {k: arch[k] for k in ours} == {k: (tuple(v) if isinstance(v, tuple) else v)
                                        for k, v in ours.items()}
  count = models.count_params(jax.eval_shape(build.model(cfg).init_fn, jax.random.key(0)))
  assert peer.num_params(theirs) == count == 8_952_067


def test_the_peer_samples_with_diffax_weights():
  """run.py gives the peer diffax's weights (`peer.load_diffax_params`): one evaluation agrees,
  so the sampler rows time the same function on both sides."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import peer  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import build  # pylint: disable=g-import-not-at-top
  cfg = diffax_cases.config("half")
  net = build.model(cfg)
  rng = np.random.default_rng(0)
  shapes = jax.eval_shape(net.init_fn, jax.random.key(0))
  params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape).astype(np.float32), shapes)
  theirs = peer.unet("half").eval()
  peer.load_diffax_params(theirs, cfg, params)
  x = rng.standard_normal((1, 32, 32, 3)).astype(np.float32)
  with torch.inference_mode():
    want = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous(),
                  torch.tensor([250])).sample.numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jax.jit(net.apply_fn)(params, x, np.array([250])))
  assert np.abs(want).max() > 0.1
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_profile_ops_finds_the_ops_of_a_compiled_program_and_their_sources():
  from benchmarks import profile_ops  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(0))
  a = jnp.ones((256, 256))
  compiled = f.lower(a, a).compile()
  times = profile_ops.op_times(lambda: compiled(a, a).block_until_ready(), calls=2)
  assert times and all(t >= 0 for t in times.values())
  sources = profile_ops.op_sources(compiled.as_text())
  assert any(name in sources for name in times)  # trace names are HLO instruction names
  assert any("tanh" in s or "dot_general" in s for s in sources.values())


def test_the_accelerator_script_measures_training_and_sampling():
  """benchmarks/accelerator.py's parts on the tiny network (CPU); `main` runs them in turn."""
  from benchmarks import accelerator  # pylint: disable=g-import-not-at-top
  cfg = accelerator.config(smoke=True, batch=4)
  train = accelerator.train(cfg, "float32", reps=1, peak=100.0)
  assert train["bench"] == "train" and train["images_per_s"] > 0 and train["tflops"] > 0
  assert train["mfu"] == pytest.approx(train["tflops"] / 100.0)
  sample = accelerator.sample(cfg, "ddim", batch=2, steps=2, reps=1)
  assert sample["ms_per_step"] > 0 and sample["images_per_s"] > 0
  assert accelerator.peak_tflops("NVIDIA H200") == 989.0
  assert accelerator.peak_tflops("TPU v5 lite") == 197.0 and accelerator.peak_tflops("cpu") is None


def test_the_memory_search_finds_the_largest_batch_that_fits():
  """benchmarks/memory.py's secant search against brute force, and that it compiles little."""
  from benchmarks import memory  # pylint: disable=g-import-not-at-top
  for fixed, per_image, budget in ((10, 3, 100), (5, 7, 4), (0, 1, 1000), (1, 2.5, 53),
                                   (50, 1, 40), (400, 33 - 0.004, 8000)):
    # increasing, nearly affine, the slope falling with the batch (as a compiled step's does)
    bytes_at = lambda b, f=fixed, s=per_image: (
        f + s * b * (1 - b / 10_000) + 0.01 * s * (b % 3 == 0))
    want = max([b for b in range(1, 2000) if bytes_at(b) <= budget], default=0)
    calls = []
    counted = lambda b, f=bytes_at: calls.append(b) or f(b)
    assert memory.largest_batch(counted, budget, probes=(8, 16)) == want, (fixed, budget)
    assert len(calls) == len(set(calls)) <= 8, calls  # bisection from 1 would take ~20


def test_the_memory_rows_of_a_train_step_and_of_a_sharded_state(monkeypatch):
  from benchmarks import memory  # pylint: disable=g-import-not-at-top
  from diffax.pipeline import parallel  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(parallel, "FSDP_MIN_SIZE", 1)  # the tiny model's leaves: shard them all
  rows = [memory.state_row("smoke", fsdp, jax.devices()[:2]) for fsdp in (1, 2)]
  assert rows[0]["state_bytes"] == rows[1]["state_bytes"] == rows[0]["per_device_max"]
  assert rows[1]["fraction"] == pytest.approx(0.5, abs=0.01)  # FSDP over 2: half each
  step = memory.step_bytes(memory.config("smoke", 2), 2)
  assert step["total"] == step["argument"] + step["output"] - step["alias"] + step["temp"]
  assert step["alias"] == rows[0]["state_bytes"]  # the donated state, counted once
  assert step["temp"] > 0
