"""The ideal denoiser of a finite data set: the posterior mean in closed form, and samplers that
return training images with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import embedded_digits
from diffax import sampling
from diffax import schedules
from diffax.evaluation import ideal_denoiser


def posterior_mean(images, x_t, alpha_bar):
  """E[x0 | x_t] by brute force in float64: Bayes' rule over the uniform law on the images."""
  y = images.reshape(len(images), -1).astype(np.float64)
  x = x_t.reshape(len(x_t), -1).astype(np.float64)
  out = []
  for row, ab in zip(x, alpha_bar):
    log_w = -((row[None] - np.sqrt(ab) * y) ** 2).sum(1) / (2 * (1 - ab))
    w = np.exp(log_w - log_w.max())
    out.append((w / w.sum()) @ y)
  return np.stack(out).reshape(x_t.shape)


def test_it_is_the_posterior_mean_and_restricts_to_a_class():
  images, labels = embedded_digits()
  images, labels = images[:300], labels[:300]
  schedule = schedules.cosine(1000)
  apply_fn, params = ideal_denoiser.ideal_denoiser(images, schedule, labels=labels)
  t = np.array([0, 100, 400, 700, 900, 999])
  x_t = np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32)
  x_t[:3] += images[:3] * np.sqrt(np.asarray(schedule.alphas_cumprod)[t[:3], None, None, None])
  got = apply_fn(params, jnp.asarray(x_t), jnp.asarray(t))
  ab = np.asarray(schedule.alphas_cumprod, np.float64)[t]
  np.testing.assert_allclose(got, posterior_mean(images, x_t, ab), atol=2e-4)
  # With a label: the posterior over that class's images; the null label (10): all of them.
  cond = {"label": jnp.asarray([3, 3, 3, 7, 7, 10])}
  got = apply_fn(params, jnp.asarray(x_t), jnp.asarray(t), cond)
  for i, label in enumerate([3, 3, 3, 7, 7, None]):
    pool = images if label is None else images[labels == label]
    np.testing.assert_allclose(got[i], posterior_mean(pool, x_t[i:i + 1], ab[i:i + 1])[0],
                               atol=2e-4)


def test_samplers_return_training_images_in_the_datas_law_once_the_steps_suffice():
  """Every sample ends as a training image (the last step denoises at the smallest noise level,
  where the posterior is one image); what the steps decide is which images: at 2 steps every
  sample is the image nearest the data mean, at 20 DPM-Solver++(2M) steps they are as varied as
  uniform draws from the data set."""
  images, _ = embedded_digits()
  images = images[:300]
  schedule = schedules.cosine(1000)
  apply_fn, params = ideal_denoiser.ideal_denoiser(images, schedule)
  sample_fn = sampling.make_sampler(apply_fn, schedule, (64, 8, 8, 1), sampler="dpmpp_2m",
                                    max_steps=20, prediction="x0", spacing="karras")
  distinct = {}
  for steps in (2, 20):
    x = np.asarray(sample_fn(params, jax.random.key(0), num_steps=steps))
    distance = ideal_denoiser.nearest_distance(x, images)
    assert ideal_denoiser.memorized_fraction(distance) == 1.0, distance
    flat, pool = x.reshape(64, -1), images.reshape(300, -1)
    nearest = np.argmin(((flat[:, None] - pool[None]) ** 2).sum(-1), axis=1)
    distinct[steps] = len(np.unique(nearest))
  uniform = 300 * (1 - (1 - 1 / 300) ** 64)  # expected distinct images of 64 uniform draws
  assert distinct[2] <= 2 and distinct[20] >= 0.85 * uniform, (distinct, uniform)


def test_nearest_distance_is_the_brute_force_minimum():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(7, 3, 3, 2)), rng.normal(size=(11, 3, 3, 2))
  expected = [min(np.sqrt(((x - y) ** 2).mean()) for y in b) for x in a]
  np.testing.assert_allclose(ideal_denoiser.nearest_distance(a, b, chunk=3), expected,
                             rtol=1e-9)
  with pytest.raises(ValueError, match="differ in size"):
    ideal_denoiser.nearest_distance(a, b[:, :2])
