"""One TFDS example -> one training example of `config.data.kind` (`kinds`), in tf.data.

`make(features, data_config)` reads the dataset's features, checks them against the config and
returns a `Preprocess`: the TFDS feature it reads, the decoders to read it with, and
`fn(example, flip_seed=None) -> {kind: f32 example, "label": i32 []}` (plus the "caption"
string when the dataset has a "caption" text feature).

- image: the uint8 "image" feature; center-crop to the aspect ratio H:W (`kinds.image_size`:
  image_size x image_width); resize to H x W with "area" when shrinking and "bilinear" when enlarging (no resize when the size
  matches, so digits' pixel values are exact); convert channels (RGB -> grayscale with ITU-R
  601 weights, grayscale -> RGB by repeating, RGBA -> RGB by dropping alpha); scale 0..255 to
  [-1, 1] as x / 127.5 - 1; optionally flip left-right.
- video: the dataset's one `Video` feature (e.g. moving_mnist's "image_sequence") or a uint8
  rank-4 tensor: its first num_frames frames, each treated as an image above; a flip mirrors
  every frame of the clip alike.
- audio: the dataset's one `Audio` feature ("audio"): int16 samples / 32768 (float samples as
  they are) clipped to [-1, 1], channels averaged to mono (or mono repeated), then the first
  `length` samples, zero-padded at the end when the clip is shorter. Its sample rate must be
  config.data.sample_rate when the dataset declares one: nothing is resampled.

Labels come from the "label" feature when the dataset has one, else they are zeros (e.g.
celeb_a, moving_mnist).
"""

from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from diffax.pipeline import kinds

# (dataset channels, config.data.channels) pairs that images and frames convert between.
_CONVERTIBLE = ((1, 1), (3, 3), (4, 3), (1, 3), (3, 1), (4, 1))


class Preprocess(NamedTuple):
  """How to read one dataset for one config.

  Attributes:
    kind: `config.data.kind`, the key of the example in the batch.
    decoders: the `decoders` argument of `builder.as_dataset` (encoded images stay encoded
      until `fn` decodes them, in parallel).
    fn: `fn(example, flip_seed=None) -> {kind: f32 example, "label": i32 []}` (+ "caption").
    has_caption: the dataset has a "caption" text feature, which `fn` passes through.
  """
  kind: str
  decoders: dict
  fn: Callable
  has_caption: bool


def feature(features, key):
  """features[key] of a TFDS FeaturesDict, or None."""
  if isinstance(features, tfds.features.FeaturesDict) and key in features:
    return features[key]
  return None


def has_label(features) -> bool:
  label = feature(features, "label")
  return label is not None and label.shape == () and np.issubdtype(label.np_dtype, np.integer)


def has_caption(features) -> bool:
  return isinstance(feature(features, "caption"), tfds.features.Text)


def _keys(features):
  return sorted(features.keys()) if hasattr(features, "keys") else features


def make(features, data_config) -> Preprocess:
  """The `Preprocess` of a dataset with `features` for `config.data`.

  Raises:
    ValueError: when the dataset has no feature of the config's kind, or its sizes, channels
      or sample rate cannot give the config's examples; the message names the field.
  """
  kind = kinds.kind(data_config)
  shape = kinds.sample_shape(data_config)
  label_fn = _label_fn(features)
  if kind == "audio":
    key, decode = _audio(features, data_config, shape)
    decoders = {}
  else:
    key, decode = (_image if kind == "image" else _video)(features, data_config, shape)
    decoders = {key: tfds.decode.SkipDecoding()}

  captioned = has_caption(features)

  def fn(example, flip_seed=None):
    x = decode(example[key], flip_seed)
    out = {kind: tf.ensure_shape(x, shape), "label": label_fn(example)}
    if captioned:
      out["caption"] = example["caption"]
    return out

  return Preprocess(kind=kind, decoders=decoders, fn=fn, has_caption=captioned)


def _label_fn(features):
  if has_label(features):
    return lambda example: tf.cast(example["label"], tf.int32)
  return lambda example: tf.zeros((), tf.int32)


def _check_channels(name, source_channels, channels, what):
  if channels not in (1, 3):
    raise ValueError(f"config.data.channels must be 1 or 3 for {what}; got {channels}.")
  if (source_channels, channels) not in _CONVERTIBLE:
    raise ValueError(f"Dataset {name!r} has {source_channels}-channel {what}; cannot convert "
                     f"them to config.data.channels={channels}.")


def _image(features, data_config, shape):
  name = data_config.dataset
  image_feature = feature(features, "image")
  if not isinstance(image_feature, tfds.features.Image):
    raise ValueError(f"Dataset {name!r} has no \"image\" Image feature (features: "
                     f"{_keys(features)}); config.data.kind='image' reads image datasets (set "
                     f"config.data.kind to 'video' or 'audio' for those).")
  if image_feature.np_dtype != np.uint8:
    raise ValueError(f"Dataset {name!r} has {image_feature.np_dtype} images; diffax reads "
                     "uint8 images (0..255).")
  size, channels = shape[:2], shape[-1]
  source_channels = image_feature.shape[-1]
  _check_channels(name, source_channels, channels, "images")

  def decode(encoded, flip_seed):
    image = image_feature.decode_example(encoded)
    image = _to_channels(tf.cast(image, tf.float32), source_channels, channels)
    image = _resize(_center_crop(image, size), size)
    image = tf.clip_by_value(image / 127.5 - 1.0, -1.0, 1.0)
    if flip_seed is not None:
      image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image

  return "image", decode


def _video(features, data_config, shape):
  name = data_config.dataset
  candidates = {k: f for k, f in features.items() if isinstance(f, tfds.features.Video) or (
      isinstance(f, tfds.features.Tensor) and len(f.shape) == 4 and f.np_dtype == np.uint8)}
  if len(candidates) != 1:
    raise ValueError(f"Dataset {name!r} has {len(candidates)} video features (a Video or a uint8 "
                     f"[T, H, W, C] tensor; features: {_keys(features)}); "
                     f"config.data.kind='video' reads datasets with exactly one, such as "
                     f"moving_mnist or moving_digits.")
  key, video_feature = next(iter(candidates.items()))
  frames, size, channels = shape[0], shape[1:3], shape[-1]
  available = video_feature.shape[0]
  if available is not None and available < frames:
    raise ValueError(f"Dataset {name!r} has clips of {available} frames; "
                     f"config.data.num_frames={frames} asks for more.")
  source_channels = video_feature.shape[-1]
  _check_channels(name, source_channels, channels, "frames")
  encoded_frames = isinstance(video_feature, tfds.features.Video)

  def decode(encoded, flip_seed):
    if encoded_frames:  # a sequence of encoded images, decoded frame by frame
      encoded = encoded[:frames]
      video = tf.map_fn(lambda frame: tf.io.decode_image(frame, channels=source_channels,
                                                         expand_animations=False),
                        encoded, fn_output_signature=tf.uint8)
    else:
      video = encoded[:frames]
    video = tf.ensure_shape(video, (frames, None, None, source_channels))
    video = _to_channels(tf.cast(video, tf.float32), source_channels, channels)
    video = _resize(_center_crop(video, size), size)
    video = tf.clip_by_value(video / 127.5 - 1.0, -1.0, 1.0)
    if flip_seed is not None:  # one coin for the whole clip
      coin = tf.random.stateless_uniform([], seed=flip_seed)
      video = tf.cond(coin < 0.5, lambda: tf.reverse(video, [2]), lambda: video)
    return video

  return key, decode


def _audio(features, data_config, shape):
  name = data_config.dataset
  candidates = {k: f for k, f in features.items() if isinstance(f, tfds.features.Audio)}
  if len(candidates) != 1:
    raise ValueError(f"Dataset {name!r} has {len(candidates)} Audio features (features: "
                     f"{_keys(features)}); config.data.kind='audio' reads datasets with "
                     f"exactly one, such as speech_commands or tones.")
  key, audio_feature = next(iter(candidates.items()))
  rate = kinds.sample_rate(data_config)
  source_rate = getattr(audio_feature, "sample_rate", None)
  if source_rate and int(source_rate) != rate:
    raise ValueError(f"Dataset {name!r} is sampled at {source_rate} Hz; set "
                     f"config.data.sample_rate={source_rate} (diffax does not resample).")
  length, channels = shape
  dtype = audio_feature.np_dtype
  if np.issubdtype(dtype, np.integer):
    scale = 1.0 / float(-np.iinfo(dtype).min)  # int16: 1 / 32768
  elif np.issubdtype(dtype, np.floating):
    scale = 1.0
  else:
    raise ValueError(f"Dataset {name!r} has {dtype} audio; diffax reads integer or float "
                     f"samples.")

  def decode(audio, flip_seed):
    del flip_seed  # random_flip is refused for audio (data.py)
    audio = tf.cast(audio, tf.float32) * scale
    if audio.shape.rank == 1:
      audio = audio[:, None]  # [L] -> [L, 1]
    if channels == 1:
      audio = tf.reduce_mean(audio, axis=-1, keepdims=True)
    elif audio.shape[-1] == 1:
      audio = tf.repeat(audio, channels, axis=-1)
    audio = tf.clip_by_value(audio[:length], -1.0, 1.0)
    return tf.pad(audio, [[0, length - tf.shape(audio)[0]], [0, 0]])

  return key, decode


def _to_channels(image, source_channels, channels):  # [..., c] -> [..., channels]
  if source_channels == 4:
    image, source_channels = image[..., :3], 3
  if source_channels == channels:
    return image
  if channels == 1:
    return tf.image.rgb_to_grayscale(image)
  return tf.repeat(image, 3, axis=-1)


def _center_crop(image, size):  # [..., h, w, c] -> the largest centred crop of aspect H:W
  height, width = image.shape[-3], image.shape[-2]
  if height is not None and width is not None and height * size[1] == width * size[0]:
    return image
  shape = tf.shape(image)
  h, w = shape[-3], shape[-2]
  crop_h = tf.minimum(h, w * size[0] // size[1])
  crop_w = tf.minimum(w, h * size[1] // size[0])
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  return image[..., top:top + crop_h, left:left + crop_w, :]


def _resize(image, size):  # [..., h, w, c] -> [..., H, W, c]; area shrinks, bilinear grows
  height, width = image.shape[-3], image.shape[-2]
  if height is not None:
    if height == size[0] and width == size[1]:
      return image
    return tf.image.resize(image, size, method="area" if height > size[0] else "bilinear")
  return tf.cond(
      tf.shape(image)[-3] > size[0],
      lambda: tf.image.resize(image, size, method="area"),
      lambda: tf.image.resize(image, size, method="bilinear"))
