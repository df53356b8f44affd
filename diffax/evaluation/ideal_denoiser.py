"""The ideal denoiser of a finite data set: a model with no network error.

For data drawn uniformly from N images x^(1..N), the posterior of x_0 given x_t = alpha_t x_0 +
sigma_t eps is a categorical over the images, so the best possible x0 prediction is

  E[x_0 | x_t] = sum_i w_i(x_t) x^(i),   w = softmax_i(-|x_t - alpha_t x^(i)|^2 / (2 sigma_t^2)).

As a denoiser (`apply_fn`, predicting x0) it lets samplers be compared on real data with the
network taken out. Every sampler's last step denoises at the schedule's smallest noise level,
where this posterior is a single image, so every sample is a training image (`nearest_distance`
0); what the sampler decides is which ones. With too few steps the samples crowd onto the images
nearest the data mean (2 steps: all on one), with enough they are as varied as uniform draws
from the data set, so their Frechet distance to it measures the sampler's error alone. With
labels, `cond["label"]` restricts the sum to that class's images (the null label, or no
condition, uses all of them): the ideal class-conditional denoiser.

  apply_fn, params = ideal_denoiser(images, schedule, labels=labels)
  sample_fn = diffax.sampling.make_sampler(apply_fn, schedule, (16, 8, 8, 1),
                                           sampler="dpmpp_2m", prediction="x0")
  x = sample_fn(params, rng, num_steps=20)
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from diffax.schedules import Schedule

PREDICTION = "x0"


def ideal_denoiser(images, schedule: Schedule, *, labels=None):
  """The denoiser E[x_0 | x_t] of the uniform law on `images`.

  Args:
    images: `[N, ...]` the data set (e.g. a training split), in the model's data range.
    schedule: the schedule whose timesteps the denoiser is called with.
    labels: optional `i32[N]` classes in [0, K): then `cond["label"]` in [0, K) restricts the
      posterior to that class; K (the null label) or no condition uses every image.

  Returns:
    `(apply_fn, params)`: `apply_fn(params, x_t, t, cond=None, *, train=False, rng=None)`
    returns the x0 prediction (`prediction="x0"` for the samplers); `params` holds the images,
    so they are traced (a new data set reuses a compiled sampler).
  """
  images = jnp.asarray(images, jnp.float32)
  if images.ndim < 2 or images.shape[0] < 1:
    raise ValueError(f"images must be [N, ...] with N >= 1, got shape {images.shape}")
  flat = images.reshape(images.shape[0], -1)
  params = {"images": flat, "sq_norms": jnp.sum(flat**2, axis=1),
            "alphas_cumprod": schedule.alphas_cumprod}
  if labels is not None:
    labels = jnp.asarray(labels, jnp.int32)
    if labels.shape != images.shape[:1]:
      raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {labels.shape}")
    params["labels"] = labels
  return apply, params


def apply(params, x_t, t, cond=None, *, train: bool = False, rng=None):
  """E[x_0 | x_t] for `x_t [B, ...]` at timesteps `t i32[B]` (see `ideal_denoiser`)."""
  del train, rng
  batch = x_t.shape[0]
  ab = params["alphas_cumprod"][t].reshape(batch, 1)  # [B, 1]
  alpha, sigma2 = jnp.sqrt(ab), 1.0 - ab
  x = x_t.reshape(batch, -1)  # [B, D]
  # -|x - alpha y|^2 / (2 sigma^2) without the |x|^2 that every image shares.
  dots = jnp.matmul(x, params["images"].T, precision=jax.lax.Precision.HIGHEST)  # [B, N]
  logits = (2.0 * alpha * dots - ab * params["sq_norms"]) / (2.0 * sigma2)
  if cond is not None and "label" in cond and "labels" in params:
    label = jnp.asarray(cond["label"], jnp.int32).reshape(batch, 1)
    num_classes = jnp.max(params["labels"]) + 1
    allowed = (params["labels"][None, :] == label) | (label >= num_classes)
    logits = jnp.where(allowed, logits, -jnp.inf)
  weights = jax.nn.softmax(logits, axis=-1)
  x0 = jnp.matmul(weights, params["images"], precision=jax.lax.Precision.HIGHEST)
  return x0.reshape(x_t.shape)


def nearest_distance(samples, images, *, chunk: int = 1024) -> np.ndarray:
  """For each sample, the RMS per-pixel distance to its nearest image: `f64[M]`.

  Args:
    samples: `[M, ...]`.
    images: `[N, ...]`, the same shape per example.
    chunk: samples compared at a time (memory: chunk x N distances).
  """
  x = np.asarray(samples, np.float64).reshape(len(samples), -1)
  y = np.asarray(images, np.float64).reshape(len(images), -1)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"samples and images differ in size: {np.shape(samples)[1:]} and "
                     f"{np.shape(images)[1:]}")
  y2 = (y**2).sum(axis=1)
  out = []
  for start in range(0, len(x), chunk):
    part = x[start:start + chunk]
    d2 = (part**2).sum(axis=1)[:, None] - 2.0 * part @ y.T + y2[None, :]
    out.append(np.sqrt(np.maximum(d2.min(axis=1), 0.0) / x.shape[1]))
  return np.concatenate(out) if out else np.zeros((0,))


def memorized_fraction(distances, *, tolerance: Optional[float] = None) -> float:
  """The share of samples within `tolerance` (RMS per pixel; default half an 8-bit level,
  1/255) of a training image."""
  tolerance = 1.0 / 255.0 if tolerance is None else tolerance
  return float(np.mean(np.asarray(distances) <= tolerance))
