"""Sampler sweeps: sample quality against cost, for samplers x numbers of steps.

`sweep` draws the same images (seed, sample i from i) with every sampler and number of steps
from a run's EMA params and, with `ideal=True`, from the ideal denoiser of the reference split
(`diffax.evaluation.ideal_denoiser`: no network error, so its rows show what the sampler alone
costs: its samples are always training images, and their FD to the reference says whether the
sampler draws them in the data's law). Each sampler compiles once
(`make_sampler` at the largest number of steps; fewer steps and other spacings are traced
knobs), and each row records how long drawing took (images per second, without compilation)
and how long compiling took (the first row of a sampler; the others show that nothing
recompiled). `write_table` writes the rows as JSON lines and markdown under `DIR/eval/`.
"""

import dataclasses
import json
import os
import time
from typing import Optional, Sequence

import jax
import numpy as np

from diffax import models
from diffax.evaluation import ideal_denoiser
from diffax.pipeline import evaluate
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.workdir import Workdir

# (sampler, spacing): each sampler with the spacing it does best with (docs/samplers.md).
DEFAULT_SAMPLERS = (("ddim", "linspace"), ("dpmpp_2m", "karras"), ("heun", "karras"),
                    ("ddpm", "linspace"))
DEFAULT_STEPS = (10, 20, 50)
# JAX's compile-time events: tracing, lowering, and XLA compilation (or the persistent cache).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class CompileTimer:
  """Sums the seconds JAX spends tracing and compiling inside a `with` block."""

  def __init__(self):
    self.seconds = 0.0

  def __call__(self, event, duration, **kwargs):
    del kwargs
    if event in _COMPILE_EVENTS:
      self.seconds += duration

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self)


def _ideal_model(net: models.Model, judge: evaluate.Judge, noise_schedule, mesh):
  """The ideal denoiser of the reference split as a `Model` (x0 prediction) and its params."""
  labels = judge.reference_labels if "label" in net.cond_keys else None
  apply_fn, params = ideal_denoiser.ideal_denoiser(judge.reference_images, noise_schedule,
                                                   labels=labels)
  model = dataclasses.replace(net, init_fn=None, apply_fn=apply_fn)
  return model, parallel.replicate(params, mesh)


def sweep(workdir: Workdir, config, mesh, *, judge: evaluate.Judge,
          samplers: Sequence[tuple[str, str]] = DEFAULT_SAMPLERS,
          steps: Sequence[int] = DEFAULT_STEPS, num_samples: int = 500,
          batch_size: int = 100, network: bool = True, ideal: bool = False, seed: int = 0,
          progress: bool = True) -> list[dict]:
  """Scores samples of every sampler x number of steps; see the module docstring.

  Args:
    workdir: the training run (its newest checkpoint's EMA params).
    config: its config (`config.sample` supplies eta, guidance and clipping).
    mesh: the devices.
    judge: scores images and holds the floor (`evaluate.Judge.create`).
    samplers: (sampler, spacing) pairs.
    steps: numbers of steps, each run by every sampler.
    num_samples: images per row.
    batch_size: images per sampler call.
    network: sweep the run's network (its EMA params).
    ideal: sweep the ideal denoiser of the reference split, and score `num_samples` uniform
      draws from that split (the ideal samples' own floor: a perfect sampler's numbers).
    seed: sample i depends on it and i alone.
    progress: print each row as it is done.

  Returns:
    The rows: first the real-vs-real floor (and the training draws with `ideal`), then one per
    model x sampler x steps.
  """
  net, noise_schedule, space = sample_lib.load_model(config, mesh)
  params, step = sample_lib.load_ema_params(workdir, config, net, mesh=mesh)
  if ideal and space is not None:
    raise ValueError("the ideal denoiser is of pixel data and this is a latent run "
                     "(config.latent.autoencoder_workdir): pass --ideal=false")
  blank = dict(sampler="", spacing="", steps=None, model_calls=None)
  rows = [dict(judge.floor, model="real (held-out)", **blank)]
  candidates = []
  if network:
    candidates.append(("network", net, params, config.diffusion.prediction))
  if ideal:
    draws = np.random.default_rng(seed).integers(0, len(judge.reference_images), num_samples)
    conditional = "label" in net.cond_keys
    rows.append(dict(judge(judge.reference_images[draws],
                           judge.reference_labels[draws] if conditional else None,
                           nearest=True), model="real (training draws)", **blank))
    candidates.append(("ideal", *_ideal_model(net, judge, noise_schedule, mesh), "x0"))
  rng = jax.random.key(seed)
  for model_name, model, model_params, prediction in candidates:
    for sampler, spacing in samplers:
      c = evaluate.sampling_config(config, sampler=sampler, num_steps=max(steps),
                                   spacing=spacing)
      with c.unlocked():
        c.diffusion.prediction = prediction
      request = sample_lib.request(c, model, noise_schedule, num_images=num_samples,
                                   batch_size=batch_size, mesh=mesh,
                                   latent_space=space if model_name == "network" else None)
      labels = request.per_image.get("cond", {}).get("label")
      for n in steps:
        run = dataclasses.replace(request, knobs=dict(request.knobs, num_steps=n))
        with CompileTimer() as timer:
          start = time.perf_counter()
          samples = run(model_params, rng)
          seconds = time.perf_counter() - start
        metrics = judge(evaluate.quantize(samples), labels, nearest=True)
        row = dict(model=model_name, sampler=sampler, spacing=spacing, steps=n,
                   model_calls=evaluate.model_calls(sampler, n), **metrics,
                   images_per_sec=num_samples / max(seconds - timer.seconds, 1e-9),
                   compile_s=timer.seconds, checkpoint_step=step)
        rows.append(row)
        if progress and jax.process_index() == 0:
          print(f"{model_name} {sampler} ({spacing}) {n} steps: "
                f"{evaluate.summary(metrics, judge.floor)}, "
                f"{row['images_per_sec']:.0f} img/s, compile {timer.seconds:.1f} s", flush=True)
  return rows


def markdown(rows: Sequence[dict], *, features: str = "classifier") -> str:
  """The rows as a markdown table (the floor first)."""
  fd = "FID" if features == "inception" else "FD"
  kid = "KID" if features == "inception" else "KD"
  columns = [("model", "model", "{}"), ("sampler", "sampler", "{}"), ("spacing", "spacing", "{}"),
             ("steps", "steps", "{}"), ("model_calls", "model calls", "{}"),
             ("fd", fd, "{:.2f}"), ("kid", f"{kid} x 1e3", "{:.2f}"),
             ("coverage", "coverage", "{:.3f}"), ("accuracy", "accuracy", "{:.3f}"),
             ("nearest", "nearest", "{:.3f}"), ("memorized", "memorized", "{:.2f}"),
             ("images_per_sec", "images/s", "{:.0f}"), ("compile_s", "compile s", "{:.1f}")]
  columns = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
  lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
           "|" + "---|" * len(columns)]
  for r in rows:
    cells = []
    for key, _, fmt in columns:
      value = r.get(key)
      if value is None or value == "":
        cells.append("")
      else:
        cells.append(fmt.format(value * 1e3 if key == "kid" else value))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_table(workdir: Workdir, rows: Sequence[dict], *, name: str = "sweep",
                notes: Optional[str] = None, features: str = "classifier") -> tuple[str, str]:
  """Writes the rows to `DIR/eval/<name>.jsonl` and `.md` (process 0); returns both paths."""
  jsonl, md = workdir.eval_table(name)
  if jax.process_index() == 0:
    os.makedirs(workdir.eval, exist_ok=True)
    with open(jsonl, "w", encoding="utf-8") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    with open(md, "w", encoding="utf-8") as f:
      f.write(markdown(rows, features=features) + (f"\n{notes}\n" if notes else ""))
  return jsonl, md

