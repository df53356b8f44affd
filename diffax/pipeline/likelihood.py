"""Bits per dimension of a run's EMA params on held-out data (`diffax.evaluation.likelihood`).

The bound runs all T steps for every image: T model evaluations per image, in batches split
over the mesh (each process computes its devices' rows); image i's noise depends on the seed and
i alone. A class-conditional model is evaluated given each image's label (a bound on
-log p(x | label)).
"""

import json
import os
from typing import Optional

import jax
import numpy as np
import tqdm

from diffax.evaluation import likelihood
from diffax.pipeline import build
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.workdir import Workdir


def check_levels(images: np.ndarray, *, name: str) -> None:
  """Raises ValueError unless `images` lie on the 256 levels of 8-bit data in [-1, 1]."""
  levels = (np.asarray(images, np.float64) + 1.0) * 127.5
  off = np.abs(levels - np.round(levels)).max() if levels.size else 0.0
  if levels.min() < -1e-3 or levels.max() > 255 + 1e-3 or off > 1e-3:
    raise ValueError(f"{name}: bits per dimension need 8-bit data mapped to [-1, 1] as "
                     f"k / 127.5 - 1 (got values in [{images.min():.3g}, {images.max():.3g}], "
                     f"{off:.2g} levels off the grid)")


def bits_per_dim(workdir: Workdir, config, mesh, *, split: Optional[str] = None,
                 num_images: Optional[int] = None, batch_size: int = 100,
                 variance: str = "large", seed: int = 0, progress: bool = True) -> dict:
  """The variational bound of the run's EMA params on a split, in bits per dimension.

  Args:
    workdir: the training run.
    config: its config.
    mesh: the devices.
    split: the data split (default `config.eval.heldout_split`).
    num_images: how many of its images (default all).
    batch_size: images per call (each call runs T model evaluations).
    variance: the reverse variance, "large" or "small" (`likelihood.VARIANCES`).
    seed: image i's noise depends on it and i alone.
    progress: show a progress bar.

  Returns:
    `{"bits_per_dim", "prior", "diffusion", "decoder"}` (each term in bits per dimension),
    with `num_images`, `split`, `variance`, `checkpoint_step`; written to
    `DIR/eval/bits_per_dim.json` by process 0.
  """
  from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  if config.get("latent") and config.latent.autoencoder_workdir:
    raise ValueError("bits/dim of a latent run would be of its latents, not of the images "
                     "(config.latent.autoencoder_workdir is set): leave out --bits_per_dim")
  if variance not in likelihood.VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; choose one of {list(likelihood.VARIANCES)}")
  split = split or config.eval.heldout_split
  real = data.load_eval_images(config, num_images, split=split)
  check_levels(real["image"], name=f"split {split!r} of {config.data.dataset!r}")
  net, noise_schedule = build.model(config), build.schedule(config)
  params, step = sample_lib.load_ema_params(workdir, config, net, mesh=mesh)
  conditional = "label" in net.cond_keys
  prediction = config.diffusion.prediction

  def terms(params, batch):
    x0, ids, labels = batch
    cond = {"label": labels} if conditional else None
    model_fn = lambda x, t: net.apply_fn(params, x, t, cond)
    return likelihood.vlb_terms(model_fn, noise_schedule, x0, jax.random.key(seed), ids=ids,
                                prediction=prediction, variance=variance)

  run = jax.jit(terms)
  count = len(real["image"])
  ids = np.arange(count, dtype=np.int32)
  parts = []
  for start in tqdm.trange(0, count, batch_size, desc="bits/dim", unit="batch",
                           disable=not progress or jax.process_index() != 0):
    stop = min(start + batch_size, count)
    batch = tuple(parallel.shard_padded(a[start:stop], mesh)
                  for a in (real["image"], ids, real["label"]))
    out = run(params, batch)
    parts.append({k: parallel.to_host(v)[:stop - start] for k, v in out.items()})
  nats = {k: np.concatenate([p[k] for p in parts]).astype(np.float64) for k in parts[0]}
  dims = int(np.prod(net.sample_shape))
  to_bits = lambda x: float(np.mean(x) / (dims * np.log(2.0)))
  total = nats["total"] / (dims * np.log(2.0))
  result = {"bits_per_dim": float(total.mean()),
            "standard_error": float(total.std(ddof=1) / np.sqrt(count)) if count > 1 else None,
            "prior": to_bits(nats["prior"]), "diffusion": to_bits(nats["diffusion"]),
            "decoder": to_bits(nats["decoder"]), "num_images": count, "split": split,
            "variance": variance, "checkpoint_step": step}
  if jax.process_index() == 0:
    os.makedirs(workdir.eval, exist_ok=True)
    with open(workdir.eval_file("bits_per_dim.json"), "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  return result
