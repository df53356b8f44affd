"""Tests of diffax.data and the embedded `digits` dataset; offline, CPU, TFDS mocked or local."""

import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from configs import common
from diffax.pipeline import data
from diffax.pipeline.datasets import digits

NUM_TRAIN, NUM_TEST = 1500, 297


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  """A data_dir with `digits` prepared in it (offline, a few seconds)."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("digits", data_dir=data_dir).download_and_prepare()
  return data_dir


def make_config(data_dir, batch_size=64, **data_overrides):
  c = common.base_config()
  c.data.data_dir = data_dir
  c.train.batch_size = batch_size
  with c.unlocked():
    for key, value in data_overrides.items():
      setattr(c.data, key, value)
  return c


def take(iterator, num_batches):
  return [next(iterator) for _ in range(num_batches)]


def stream(batches):
  """Concatenates batches into one stream of images [n, H, W, C] and labels [n]."""
  return (np.concatenate([b["image"] for b in batches]),
          np.concatenate([b["label"] for b in batches]))


def as_rows(images, labels):
  """Sorted (label, pixels...) rows: a multiset of examples, comparable across orders."""
  rows = np.concatenate([labels[:, None].astype(np.float32),
                         images.reshape(len(images), -1)], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def digits_reference(start, stop):
  """scikit-learn's digits [start:stop] mapped the way the pipeline maps them: f32 in [-1, 1]."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  raw = sk_datasets.load_digits()
  images = np.round(raw.images[start:stop] * 255 / 16).astype(np.float32)
  return images[..., None] / np.float32(127.5) - 1, raw.target[start:stop].astype(np.int32)


def test_digits_builder_prepares_offline_with_sklearn_images(digits_dir):
  builder = tfds.builder("digits", data_dir=digits_dir)
  assert builder.is_prepared()
  splits = builder.info.splits
  assert (splits["train"].num_examples, splits["test"].num_examples) == (NUM_TRAIN, NUM_TEST)
  assert builder.info.features["label"].num_classes == 10

  config = make_config(digits_dir)
  info = data.dataset_info(config)
  assert info == data.DatasetInfo(num_examples=NUM_TRAIN, image_shape=(8, 8, 1), num_classes=10)
  for split, start, stop in [("train", 0, NUM_TRAIN), ("test", NUM_TRAIN, NUM_TRAIN + NUM_TEST)]:
    examples = data.load_eval_images(config, stop - start, split=split)
    assert examples["image"].shape[1:] == (8, 8, 1)
    assert examples["image"].dtype == np.float32 and examples["label"].dtype == np.int32
    assert examples["image"].min() == -1.0 and examples["image"].max() == 1.0
    assert set(examples["label"].tolist()) == set(range(10))
    # The same examples as scikit-learn's, with v in 0..16 -> round(v * 255 / 16) / 127.5 - 1.
    np.testing.assert_array_equal(as_rows(examples["image"], examples["label"]),
                                  as_rows(*digits_reference(start, stop)))
  images, labels = digits.load_images()
  assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
  assert sorted(np.unique(images).tolist()) == [round(v * 255 / 16) for v in range(17)]
  assert labels.shape == (1797,)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streaming"])
def test_resume_at_any_step_gives_the_same_batches(digits_dir, in_memory):
  # 1500 examples, batch 64: epoch 0 ends inside step 23, epoch 1 inside step 46.
  config = make_config(digits_dir, random_flip=True, in_memory=in_memory)
  from_zero = take(data.create_iterator(config), 50)
  for start in (1, 22, 23, 45):
    resumed = take(data.create_iterator(config, start_step=start), 3)
    for got, want in zip(resumed, from_zero[start:start + 3]):
      np.testing.assert_array_equal(got["image"], want["image"])
      np.testing.assert_array_equal(got["label"], want["label"])

  batch = from_zero[0]
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  # Each epoch visits every example once (up to flips), in a new order.
  images, labels = stream(from_zero)
  unflipped = data.load_eval_images(config, NUM_TRAIN)
  for epoch in range(2):
    part = slice(epoch * NUM_TRAIN, (epoch + 1) * NUM_TRAIN)
    canonical = np.minimum(images[part], images[part, :, ::-1])  # flip-invariant key
    np.testing.assert_array_equal(
        as_rows(canonical, labels[part]),
        as_rows(np.minimum(unflipped["image"], unflipped["image"][:, :, ::-1]),
                unflipped["label"]))
  assert not np.array_equal(labels[:NUM_TRAIN], labels[NUM_TRAIN:2 * NUM_TRAIN])


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streaming"])
def test_random_flip_mirrors_about_half_and_keeps_the_order(digits_dir, in_memory):
  plain = stream(take(data.create_iterator(
      make_config(digits_dir, in_memory=in_memory, random_flip=False)), 30))
  flipped = stream(take(data.create_iterator(
      make_config(digits_dir, in_memory=in_memory, random_flip=True)), 30))
  np.testing.assert_array_equal(plain[1], flipped[1])
  same = np.all(plain[0] == flipped[0], axis=(1, 2, 3))
  mirrored = np.all(plain[0][:, :, ::-1] == flipped[0], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  fraction = np.mean(mirrored & ~same)
  assert 0.4 < fraction < 0.6, fraction
  # Without random_flip, every image is exactly one of the split's images.
  reference = as_rows(*stream([data.load_eval_images(make_config(digits_dir), NUM_TRAIN)]))
  np.testing.assert_array_equal(as_rows(plain[0][:NUM_TRAIN], plain[1][:NUM_TRAIN]),
                                reference)


def test_seed_changes_the_order(digits_dir):
  config = make_config(digits_dir)
  first = next(data.create_iterator(config))
  config.seed = 1
  other = next(data.create_iterator(config))
  assert not np.array_equal(first["label"], other["label"])


def test_processes_read_disjoint_shards_that_cover_the_split(digits_dir):
  process_count = 3
  shard_size = NUM_TRAIN // process_count  # 500
  config = make_config(digits_dir, batch_size=6 * process_count)
  shards = []
  for index in range(process_count):
    batches = take(data.create_iterator(config, process_index=index,
                                        process_count=process_count), -(-2 * shard_size // 6))
    assert batches[0]["image"].shape == (6, 8, 8, 1)
    images, labels = stream(batches)
    shards.append((images[:shard_size], labels[:shard_size]))
    # The shard's second epoch is the same examples as its first.
    np.testing.assert_array_equal(as_rows(images[:shard_size], labels[:shard_size]),
                                  as_rows(images[shard_size:2 * shard_size],
                                          labels[shard_size:2 * shard_size]))
  union = as_rows(np.concatenate([s[0] for s in shards]), np.concatenate([s[1] for s in shards]))
  whole = data.load_eval_images(config, NUM_TRAIN)
  np.testing.assert_array_equal(union, as_rows(whole["image"], whole["label"]))


def test_bad_batch_and_process_arguments_fail_early(digits_dir):
  config = make_config(digits_dir, batch_size=10)
  with pytest.raises(ValueError, match="batch_size=10"):
    data.create_iterator(config, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="process_index"):
    data.create_iterator(config, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="channels"):
    data.create_iterator(make_config(digits_dir, channels=2))
  with pytest.raises(ValueError, match=r"num_images must be in \[1, 297\]"):
    data.load_eval_images(make_config(digits_dir), 298, split="test")


def test_unknown_and_missing_datasets_fail_fast_with_a_clear_message(tmp_path, monkeypatch):
  # The bound only guards against a network retry loop (minutes), not a speed target.
  start = time.perf_counter()
  with pytest.raises(ValueError, match="'no_such_dataset' is not a TFDS dataset"):
    data.create_iterator(make_config(str(tmp_path), dataset="no_such_dataset"))
  with pytest.raises(ValueError, match=f"'mnist' is not prepared in {tmp_path}.*download"):
    data.create_iterator(make_config(str(tmp_path), dataset="mnist", download=False))

  def failing_download(self, *args, **kwargs):
    raise OSError("no network")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", failing_download)
  with pytest.raises(ValueError, match="'cifar10'.*downloading it failed.*no network"):
    data.create_iterator(make_config(str(tmp_path), dataset="cifar10"))
  assert time.perf_counter() - start < 60


def test_mock_mnist_resized_up_and_converted_to_rgb(tmp_path):
  with tfds.testing.mock_data(num_examples=20):
    config = make_config(str(tmp_path), batch_size=8, dataset="mnist", image_size=32,
                         channels=3, random_flip=True)
    batches = take(data.create_iterator(config), 5)  # 40 positions: across an epoch boundary
    resumed = take(data.create_iterator(config, start_step=2), 3)
    native = data.load_eval_images(make_config(str(tmp_path), dataset="mnist", image_size=28,
                                               channels=1), 20)
    small = data.load_eval_images(make_config(str(tmp_path), dataset="mnist", image_size=7,
                                              channels=1), 20)
  image = batches[0]["image"]
  assert image.shape == (8, 32, 32, 3) and image.dtype == np.float32
  assert -1.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.1
  np.testing.assert_array_equal(image[..., 0], image[..., 1])  # grayscale repeated to RGB
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  assert np.all((0 <= batches[0]["label"]) & (batches[0]["label"] < 10))
  for got, want in zip(resumed, batches[2:]):
    np.testing.assert_array_equal(got["image"], want["image"])
  # Shrinking 28 -> 7 with "area" averages 4x4 blocks.
  blocks = native["image"].reshape(20, 7, 4, 7, 4, 1).mean(axis=(2, 4))
  np.testing.assert_allclose(small["image"], blocks, atol=1e-5)


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streaming"])
def test_mock_cifar10_resized_down_and_converted_to_grayscale(tmp_path, in_memory):
  with tfds.testing.mock_data(num_examples=12):
    config = make_config(str(tmp_path), batch_size=4, dataset="cifar10", image_size=16,
                         channels=1, in_memory=in_memory)
    batch = next(data.create_iterator(config))
    rgb = data.load_eval_images(make_config(str(tmp_path), dataset="cifar10", image_size=16,
                                            channels=3), 12)
  assert batch["image"].shape == (4, 16, 16, 1)
  # RGB -> gray with ITU-R 601 luma weights, in the order of some of the 12 examples.
  gray = rgb["image"] @ np.array([0.2989, 0.587, 0.114], np.float32)
  for image in batch["image"][..., 0]:
    assert np.min(np.abs(gray - image).max(axis=(1, 2))) < 2e-3


def test_mock_celeb_a_is_center_cropped_and_unlabeled(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    batch = next(data.create_iterator(make_config(
        str(tmp_path), batch_size=4, dataset="celeb_a", image_size=16, channels=3)))
    info = data.dataset_info(make_config(str(tmp_path), dataset="celeb_a", image_size=16,
                                         channels=3))
    cropped = data.load_eval_images(make_config(str(tmp_path), dataset="celeb_a",
                                                image_size=178, channels=3), 4)
    encoded = tfds.builder("celeb_a").as_dataset(
        split="train", shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    raw = np.stack([tf.io.decode_image(example["image"]).numpy()
                    for example in encoded.take(4)])
  assert batch["image"].shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(batch["label"], np.zeros(4, np.int32))
  assert info.num_classes == 0 and info.image_shape == (16, 16, 3)
  assert raw.shape == (4, 218, 178, 3)  # rows 20..197 are the centered 178 x 178 square
  np.testing.assert_allclose(cropped["image"], raw[:, 20:198] / 127.5 - 1, atol=1e-6)
