"""The captioned digits datasets (offline TFDS builders) and the data pipeline's captions and
non-square images."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from configs import digits_pairs_text
from configs import digits_text
from diffax.pipeline import build
from diffax.pipeline import data
from diffax.pipeline.datasets import captions
from conftest import embedded_digits


def as_regex(template):
  """A template as a regex matching any digit name in its slots."""
  names = "|".join(list("0123456789") + list(captions.WORDS))
  out = re.escape(template)
  for slot in ("d", "l", "r"):
    out = out.replace(re.escape("{" + slot + "}"), f"({names})")
  for slot in ("a", "a_l", "a_r"):
    out = out.replace(re.escape("{" + slot + "}"), "(a|an)")
  return re.compile(f"^{out}$")


def split(name, split_name):
  """A split of a captioned dataset as numpy (prepared offline in the default data_dir)."""
  config = common.base_config()
  config.data.dataset = name
  builder = data._prepared_builder(config)  # pylint: disable=protected-access
  return tfds.as_numpy(builder.as_dataset(split=split_name, batch_size=-1, shuffle_files=False))


def matches(texts, templates):
  patterns = [as_regex(t) for t in templates]
  return [any(p.match(t.decode()) for p in patterns) for t in texts]


def test_digits_text_captions_name_the_digit_and_hold_phrasings_out():
  train, test = split("digits_text", "train"), split("digits_text", "test")
  assert len(train["caption"]) == 4 * 1500 and len(test["caption"]) == 297
  assert all(matches(train["caption"], captions.TRAIN_SINGLE))
  assert not any(matches(train["caption"], captions.HELD_OUT_SINGLE))
  assert all(matches(test["caption"], captions.HELD_OUT_SINGLE))
  for caption, label in zip(train["caption"][:500], train["label"][:500]):
    words = caption.decode().replace(",", " ").split()
    assert str(label) in words or captions.WORDS[label] in words, (caption, label)
  images, labels = embedded_digits()  # the images are the embedded digits, unchanged
  rows = {tuple(np.round((im[..., 0] + 1) * 127.5).astype(int).ravel()): l
          for im, l in zip(images, labels)}
  for image, label in zip(train["image"][:50], train["label"][:50]):
    assert rows[tuple(image[..., 0].astype(int).ravel())] == label


def test_pairs_are_two_digits_side_by_side_captioned_by_position():
  train = split("digits_pairs_text", "train")
  assert train["image"].shape == (6000, 8, 16, 1)
  assert all(matches(train["caption"], captions.TRAIN_PAIR))
  images, labels = embedded_digits()
  rows = {tuple(np.round((im[..., 0] + 1) * 127.5).astype(int).ravel()): l
          for im, l in zip(images, labels)}
  for image, label, caption in zip(train["image"][:40], train["label"][:40],
                                    train["caption"][:40]):
    left, right = divmod(int(label), 10)
    assert rows[tuple(image[:, :8, 0].astype(int).ravel())] == left
    assert rows[tuple(image[:, 8:, 0].astype(int).ravel())] == right
    text = caption.decode()
    name = lambda d: f"({d}|{captions.WORDS[d]})"
    assert (re.search(f"{name(left)} to the left of an? {name(right)}", text)
            or re.search(f"{name(right)} to the right of an? {name(left)}", text)
            or re.search(f"{name(left)} on the left and {name(right)} on the right", text)
            or re.search(f"{name(right)} on the right and {name(left)} on the left", text)), text
  # Both phrasings of an order occur, and both orders of a pair of digits.
  texts = [c.decode() for c in train["caption"]]
  assert any("to the left of" in t for t in texts) and any("to the right of" in t for t in texts)


def test_captions_are_deterministic():
  rng = lambda: np.random.default_rng([1234, 0])
  a = [captions.single(d % 10, rng()) for d in range(5)]
  assert a == [captions.single(d % 10, rng()) for d in range(5)]
  assert captions.pair(8, 3, np.random.default_rng(0), ("{a_l} {l} left of {a_r} {r}",)) in (
      "an 8 left of a 3", "an eight left of a 3", "an 8 left of a three",
      "an eight left of a three")


def test_iterator_yields_captions_and_non_square_images():
  config = digits_pairs_text.get_config()
  with config.unlocked():
    config.train.batch_size = 32
  batch = next(data.create_iterator(config))
  assert batch["image"].shape == (32, 8, 16, 1) and batch["caption"].shape == (32,)
  assert build.sample_shape(config) == (8, 16, 1)
  captions_ = data.captions(config)
  assert len(captions_) == len(set(captions_)) and set(
      c.decode() for c in batch["caption"]) <= set(captions_)
  # Resumes exactly, captions included.
  again = next(data.create_iterator(config, start_step=0))
  np.testing.assert_array_equal(again["caption"], batch["caption"])


def test_non_square_resize_and_crop():
  config = digits_text.get_config()
  with config.unlocked():
    config.data.image_size, config.data.image_width, config.train.batch_size = 4, 8, 8
  batch = next(data.create_iterator(config))
  assert batch["image"].shape == (8, 4, 8, 1)  # 8x8 cropped to 4:8 (rows 2..5), then kept
  square = digits_text.get_config()
  with square.unlocked():
    square.train.batch_size = 8
  full = next(data.create_iterator(square))["image"]
  np.testing.assert_allclose(batch["image"], full[:, 2:6], atol=1e-6)
  with config.unlocked():
    config.data.image_width = 0
  with pytest.raises(ValueError, match=r"config.data.image_width must be an int >= 1 .*, got 0"):
    build.sample_shape(config)


def test_a_text_model_needs_captions():
  config = digits_text.get_config()
  with config.unlocked():
    config.data.dataset = "digits"
  with pytest.raises(ValueError, match="config.data.dataset='digits' has no 'caption'"):
    data.create_iterator(config)
