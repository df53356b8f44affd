"""Classifier-free guidance on a real model: configs/digits_cond.py trained through
scripts/train.py (condition dropout 0.1; conftest's `digits_cond_run`), judged by a logistic
regression trained on the same digits (`digit_classifier`).

With guidance scale 3 the samples are the requested digit far more often than with scale 0,
which must ignore the label (about 1 in 10 by chance). Both scales share one compile (the scale
is a traced knob). Also checks the pipeline's `Request`, the path scripts/sample.py takes:
labels, guidance and per-image inpainting (known pixels kept exactly).
"""

import jax
import numpy as np
import pytest

from configs import common
from diffax import sampling
from diffax.pipeline import build
from diffax.pipeline import sample
from diffax.pipeline.workdir import Workdir
from conftest import embedded_digits

NUM_CLASSES = 10
SAMPLES_PER_CLASS = 10
SCALES = (0.0, 3.0)


@pytest.fixture(scope="module")
def trained(digits_cond_run):
  """(config, model, schedule, EMA params) of the trained run."""
  config = Workdir(digits_cond_run).load_config(defaults=common.base_config())
  net, schedule = build.model(config), build.schedule(config)
  params, step = sample.load_ema_params(Workdir(digits_cond_run), config, net)
  assert step == 300
  return config, net, schedule, params


def test_guidance_draws_the_requested_digit(trained, digit_classifier):
  _, net, schedule, params = trained
  batch = NUM_CLASSES * SAMPLES_PER_CLASS
  labels = np.arange(batch) % NUM_CLASSES
  sample_fn = sampling.make_sampler(net.apply_fn, schedule, (batch, 8, 8, 1), sampler="dpmpp_2m",
                                    max_steps=20, spacing="karras", clip_x0=True,
                                    null_cond=net.null_cond)
  accuracy = {}
  for w in SCALES:  # the scale is a traced knob: one compile for both
    x = np.asarray(sample_fn(params, jax.random.key(2), cond={"label": labels},
                             guidance_scale=w))
    predicted = digit_classifier.predict(x.reshape(batch, -1))
    accuracy[w] = float(np.mean(predicted == labels))
  print("accuracy by guidance scale:", accuracy)  # measured: {0.0: 0.09, 3.0: 0.98}
  assert accuracy[3.0] > accuracy[0.0] + 0.4, accuracy
  assert accuracy[3.0] > 0.6, accuracy
  assert accuracy[0.0] < 0.35, accuracy  # w = 0 ignores the label: about chance (0.1)


def test_request_inpaints_per_image_with_labels(trained):
  """The scripts/sample.py path: guided, labels i % 10, each image inpainting its own known
  image (rows i * batch_size ... of a [2, H, W, C] stack: alternating), known pixels exact."""
  config, net, schedule, params = trained
  known = embedded_digits()[0][:2]  # [2, 8, 8, 1]
  with config.unlocked():
    config.sample.num_steps = 10
  batch = 10
  mask = np.zeros((8, 8, 1), np.float32)
  mask[:4] = 1.0  # the top half is known
  req = sample.request(config, net, schedule, num_images=2 * batch, batch_size=batch,
                       init_image=known, mask=mask, resample=2)
  np.testing.assert_array_equal(req.batch_knobs(1).cond["label"],
                                np.arange(10, 20) % NUM_CLASSES)
  out = req(params, jax.random.key(3))  # [20, 8, 8, 1]
  np.testing.assert_array_equal(out[0::2, :4], np.broadcast_to(known[0, :4], (batch, 4, 8, 1)))
  np.testing.assert_array_equal(out[1::2, :4], np.broadcast_to(known[1, :4], (batch, 4, 8, 1)))
  assert np.std(out[0::2, 4:], axis=0).mean() > 0.05  # the bottom half is drawn, not copied
  assert np.abs(out[:, 4:] - known[np.arange(2 * batch) % 2, 4:]).mean() > 0.05


def test_request_errors(trained):
  config, net, schedule, _ = trained
  with pytest.raises(ValueError, match="mask needs init_image"):
    sample.request(config, net, schedule, num_images=4, batch_size=4, mask=np.ones((8, 8, 1)))
  with pytest.raises(ValueError, match=r"init_image of shape \(1, 4, 4, 1\) does not fit"):
    sample.request(config, net, schedule, num_images=4, batch_size=4,
                   init_image=np.zeros((4, 4, 1)), strength=0.5)
  req = sample.request(config, net, schedule, num_images=4, batch_size=4, class_label=10)
  with pytest.raises(ValueError, match=r"cond\['label'\] must lie in \[0, 10\)"):
    req.batch_knobs(0)
