"""Video and audio data: the embedded `moving_digits` and `tones` datasets, the iterator on
clips (shapes, exact resume, flips of whole clips), TFDS moving_mnist and speech_commands
(mocked: no network), and config errors that name the field.

`moving_digits` and `tones` are prepared once in the default TFDS data_dir (as the training
runs read them), about 15 s the first time on a machine.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import common
from diffax.pipeline import build
from diffax.pipeline import data
from diffax.pipeline.datasets import digits
from diffax.pipeline.datasets import moving_digits
from diffax.pipeline.datasets import tones


def video_config(batch_size=16, **data_overrides):
  c = common.base_config()
  c.train.batch_size = batch_size
  c.data.update(dict(dataset="moving_digits", kind="video", num_frames=8, image_size=16,
                     channels=1))
  c.data.update(data_overrides)
  return c


def audio_config(batch_size=16, **data_overrides):
  c = common.base_config()
  c.train.batch_size = batch_size
  c.data.update(dict(dataset="tones", kind="audio", length=2048, sample_rate=8000,
                     channels=1))
  c.data.update(data_overrides)
  return c


def test_moving_digits_are_an_embedded_digit_bouncing_at_constant_speed():
  builder = tfds.builder("moving_digits")
  builder.download_and_prepare()
  splits = builder.info.splits
  assert (splits["train"].num_examples, splits["test"].num_examples) == (6000, 1188)
  raw = list(builder.as_dataset(split="test", shuffle_files=False).take(64).as_numpy_iterator())
  clips = data.load_eval_images(video_config(), 64, split="test")
  assert clips["video"].shape == (64, 8, 16, 16, 1) and clips["video"].dtype == np.float32
  np.testing.assert_array_equal(clips["label"], [r["label"] for r in raw])
  images, labels = digits.load_images()
  test_digits = images[digits.NUM_TRAIN:].reshape(-1, 64).astype(np.int64)
  for clip, example in zip(clips["video"], raw):
    positions = example["position"]  # [8, 2]
    np.testing.assert_array_equal(
        positions, moving_digits.trajectory(positions[0], example["velocity"]))
    assert set(np.abs(example["velocity"]).tolist()) <= {1, 2}
    pixels = np.round((clip[..., 0] + 1) * 127.5).astype(np.int64)  # [8, 16, 16] in 0..255
    crops = np.stack([p[y:y + 8, x:x + 8] for p, (y, x) in zip(pixels, positions)])
    assert np.all(crops == crops[0])  # the same digit in every frame ...
    outside = pixels.copy()
    for p, (y, x) in zip(outside, positions):
      p[y:y + 8, x:x + 8] = 0
    assert not outside.any()  # ... on black
    match = np.flatnonzero(np.all(test_digits == crops[0].reshape(1, 64), axis=1))
    assert match.size and labels[digits.NUM_TRAIN + match[0]] == example["label"]
  # The digits bounce: some clips reverse direction within their 8 frames.
  steps = np.diff(np.stack([r["position"] for r in raw]), axis=1)  # [64, 7, 2]
  assert np.any(np.sign(steps[:, 1:]) == -np.sign(steps[:, :-1]))


def test_tones_have_their_label_as_dominant_frequency():
  clips = data.load_eval_images(audio_config(), 400, split="test")
  assert clips["audio"].shape == (400, 2048, 1) and clips["audio"].dtype == np.float32
  assert 0.3 < np.abs(clips["audio"]).max() <= 1.0
  label, distance = tones.nearest_pitch(tones.dominant_frequency(clips["audio"]))
  np.testing.assert_array_equal(label, clips["label"])
  assert distance.max() < 0.05  # semitones: the peak finder is exact to a few cents
  assert np.bincount(clips["label"]).tolist() == [50] * 8


@pytest.mark.parametrize("in_memory", [True, False], ids=["in_memory", "streaming"])
def test_video_batches_resume_exactly_and_flip_whole_clips(in_memory):
  # The test split (1,188 clips) reads faster than train's 6,000.
  config = video_config(num_frames=6, random_flip=True, in_memory=in_memory, split="test")
  batches = [b for _, b in zip(range(4), data.create_iterator(config))]
  assert batches[0]["video"].shape == (16, 6, 16, 16, 1)
  resumed = next(data.create_iterator(config, start_step=3))
  np.testing.assert_array_equal(resumed["video"], batches[3]["video"])
  plain = [b for _, b in zip(range(4), data.create_iterator(video_config(
      num_frames=6, in_memory=in_memory, split="test")))]
  x, y = np.concatenate([b["video"] for b in plain]), np.concatenate([b["video"] for b in batches])
  same = np.all(x == y, axis=(1, 2, 3, 4))
  mirrored = np.all(x[:, :, :, ::-1] == y, axis=(1, 2, 3, 4))  # every frame mirrored alike
  assert np.all(same | mirrored) and 0.25 < np.mean(mirrored & ~same) < 0.75


def test_audio_clips_are_cropped_and_not_flipped():
  batch = next(data.create_iterator(audio_config(length=1000)))
  assert batch["audio"].shape == (16, 1000, 1)
  with pytest.raises(ValueError, match="random_flip .* audio"):
    data.create_iterator(audio_config(random_flip=True))


def test_mock_moving_mnist_clips(tmp_path):
  with tfds.testing.mock_data(num_examples=6):
    config = video_config(dataset="moving_mnist", split="test", num_frames=10, image_size=32,
                          data_dir=str(tmp_path), batch_size=4)
    batch = next(data.create_iterator(config))
    full = data.load_eval_images(video_config(dataset="moving_mnist", split="test",
                                              num_frames=20, image_size=64,
                                              data_dir=str(tmp_path)), 6)
    with pytest.raises(ValueError, match="clips of 20 frames; config.data.num_frames=30"):
      data.create_iterator(video_config(dataset="moving_mnist", split="test", num_frames=30,
                                        data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="no \"image\" Image feature.*config.data.kind"):
      data.create_iterator(video_config(dataset="moving_mnist", split="test", kind="image",
                                        data_dir=str(tmp_path)))
  assert batch["video"].shape == (4, 10, 32, 32, 1)
  np.testing.assert_array_equal(batch["label"], 0)  # moving_mnist has no labels
  # 64 -> 32 with "area" averages 2x2 blocks of the first 10 frames.
  blocks = full["video"][:, :10].reshape(6, 10, 32, 2, 32, 2, 1).mean(axis=(3, 5))
  for clip in batch["video"]:  # each is one of the 6 clips, in the iterator's order
    assert np.abs(blocks - clip).max(axis=(1, 2, 3, 4)).min() < 1e-5


def test_mock_speech_commands_clips(tmp_path):
  with tfds.testing.mock_data(num_examples=4):
    config = audio_config(dataset="speech_commands", split="train", sample_rate=16000,
                          length=16000, data_dir=str(tmp_path), batch_size=4)
    batch = next(data.create_iterator(config))
    info = data.dataset_info(config)
    with pytest.raises(ValueError, match="sampled at 16000 Hz; set config.data.sample_rate"):
      data.create_iterator(audio_config(dataset="speech_commands", split="train",
                                        sample_rate=8000, data_dir=str(tmp_path)))
  assert batch["audio"].shape == (4, 16000, 1) and info.num_classes == 12
  assert np.all(np.abs(batch["audio"]) <= 1.0)


@pytest.mark.parametrize("overrides, match", [
    (dict(kind="sound"), r"config.data.kind='sound' is unknown; choose one of \['image', "
                         r"'video', 'audio'\]"),
    (dict(kind="video", num_frames=None), "config.data.num_frames must be an int >= 1 for "
                                          "config.data.kind='video'"),
    (dict(kind="audio", length=0), "config.data.length must be an int >= 1"),
])
def test_example_shapes_are_checked_naming_the_field(overrides, match):
  c = common.base_config()
  c.data.update(overrides)
  with pytest.raises(ValueError, match=match):
    build.sample_shape(c)


def test_example_shapes_of_each_kind():
  assert build.sample_shape(common.base_config()) == (8, 8, 1)
  assert build.sample_shape(video_config(num_frames=5)) == (5, 16, 16, 1)
  assert build.sample_shape(audio_config(length=100)) == (100, 1)
