"""Classifier-free guidance on a real model: a class-conditional digits U-Net trained here (label
dropout 0.1), judged by a logistic-regression classifier trained here on the same digits.

With guidance scale 3 the samples are the requested digit far more often than with scale 0,
which must ignore the label (about 1 in 10 by chance). Both scales share one compile (the scale is
a traced knob). Also checks `generate.make_sample_fn`, the path scripts/sample.py takes: labels,
guidance and per-image inpainting (known pixels kept exactly).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets as sk_datasets
from sklearn import linear_model

from configs import digits_cond
from diffax import generate
from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules

TRAIN_STEPS = 300
BATCH = 64
NUM_CLASSES = 10
SAMPLES_PER_CLASS = 10
SCALES = (0.0, 3.0)
EMA = 0.98


def digits_arrays():
  """sklearn's digits as the embedded dataset stores them: `[1797, 8, 8, 1]` in [-1, 1]."""
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)) / 127.5 - 1.0
  return images[..., None].astype(np.float32), digits.target.astype(np.int32)


def tiny_config():
  c = digits_cond.get_config()
  c.model.base_channels = 16
  c.model.num_res_blocks = 1
  c.model.attention_resolutions = ()
  c.model.num_groups = 8
  c.model.dropout = 0.0
  return c


@pytest.fixture(scope="module")
def trained():
  """(config, apply_fn, schedule, params) of a conditional model after TRAIN_STEPS steps."""
  config = tiny_config()
  init_fn, apply_fn = models.create(config)
  schedule = schedules.from_config(config.diffusion)
  loss_fn = losses.make_loss_fn(apply_fn, schedule, prediction=config.diffusion.prediction,
                                num_classes=NUM_CLASSES,
                                label_dropout=config.train.label_dropout)
  tx = optax.adam(optax.warmup_constant_schedule(0.0, 2e-3, 50))
  params = init_fn(jax.random.key(0))
  images, labels = digits_arrays()

  @functools.partial(jax.jit, donate_argnums=(0,))
  def train_step(carry, batch, rng):
    params, opt_state, ema = carry
    grads, _ = jax.grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: EMA * e + (1 - EMA) * p, ema, params)
    return params, opt_state, ema

  carry = (params, tx.init(params), jax.tree.map(jnp.copy, params))
  order = np.random.default_rng(0).integers(0, len(images), (TRAIN_STEPS, BATCH))
  for step, idx in enumerate(order):
    carry = train_step(carry, {"image": images[idx], "label": labels[idx]},
                       jax.random.fold_in(jax.random.key(1), step))
  ema = carry[2]
  return config, apply_fn, schedule, ema


@pytest.fixture(scope="module")
def classifier():
  images, labels = digits_arrays()
  clf = linear_model.LogisticRegression(max_iter=2000)
  clf.fit(images.reshape(len(images), -1), labels)
  return clf


def test_guidance_draws_the_requested_digit(trained, classifier):
  _, apply_fn, schedule, params = trained
  batch = NUM_CLASSES * SAMPLES_PER_CLASS
  labels = np.arange(batch) % NUM_CLASSES
  sample_fn = sampling.make_sampler(apply_fn, schedule, (batch, 8, 8, 1), sampler="dpmpp_2m",
                                    max_steps=20, spacing="karras", clip_x0=True,
                                    null_label=NUM_CLASSES)
  accuracy = {}
  for w in SCALES:  # the scale is a traced knob: one compile for both
    x = np.asarray(sample_fn(params, jax.random.key(2), cond=labels, guidance_scale=w))
    predicted = classifier.predict(x.reshape(batch, -1))
    accuracy[w] = float(np.mean(predicted == labels))
  print("accuracy by guidance scale:", accuracy)  # measured: {0.0: 0.08, 3.0: 0.99}
  assert accuracy[3.0] > accuracy[0.0] + 0.4, accuracy
  assert accuracy[3.0] > 0.6, accuracy
  assert accuracy[0.0] < 0.35, accuracy  # w = 0 ignores the label: about chance (0.1)


def test_make_sample_fn_inpaints_per_image_with_labels(trained):
  """The scripts/sample.py path: guided, labels i % 10, each image inpainting its own known
  image (rows i * batch_size ... of a [2, H, W, C] stack: alternating), known pixels exact."""
  config, apply_fn, schedule, params = trained
  images, _ = digits_arrays()
  with config.unlocked():
    config.sample.num_steps = 10
  batch = 10
  known = images[:2]  # [2, 8, 8, 1]: images 0, 2, 4, ... keep known[0], the odd ones known[1]
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:4] = 1.0  # the top half is known
  sample_fn = generate.make_sample_fn(apply_fn, schedule, config, batch_size=batch,
                                      init_image=known, mask=mask, resample=2)
  np.testing.assert_array_equal(sample_fn.batch_knobs(1).cond, np.arange(10, 20) % NUM_CLASSES)
  out = generate.generate(sample_fn, params, 2 * batch, batch, jax.random.key(3),
                          progress=False)  # [20, 8, 8, 1]
  np.testing.assert_array_equal(out[0::2, :4], np.broadcast_to(known[0, :4], (batch, 4, 8, 1)))
  np.testing.assert_array_equal(out[1::2, :4], np.broadcast_to(known[1, :4], (batch, 4, 8, 1)))
  assert np.std(out[0::2, 4:], axis=0).mean() > 0.05  # the bottom half is drawn, not copied
  assert np.abs(out[:, 4:] - known[np.arange(2 * batch) % 2, 4:]).mean() > 0.05


def test_make_sample_fn_errors(trained):
  config, apply_fn, schedule, _ = trained
  with pytest.raises(ValueError, match="mask needs init_image"):
    generate.make_sample_fn(apply_fn, schedule, config, batch_size=4, mask=np.ones((8, 8, 1)))
  with pytest.raises(ValueError, match=r"init_image of shape \(1, 4, 4, 1\) does not fit"):
    generate.make_sample_fn(apply_fn, schedule, config, batch_size=4,
                            init_image=np.zeros((4, 4, 1)), strength=0.5)
  with pytest.raises(ValueError, match="labels must lie in"):
    generate.make_sample_fn(apply_fn, schedule, config, batch_size=4, labels=[10])
