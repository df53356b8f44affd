"""Samples out and edits in, by `config.data.kind`: the one place that picks the file formats.

  kind    written by save_samples                             read by load (--init_image)
  image   PNG grid + .npz                                     PNG, .npz
  video   PNG of every frame + animated GIF + .npz            GIF (one clip), .npz
  audio   PNG waveform/spectrogram panels + WAV files + .npz  WAV, .npz

An .npz holds float32 in [-1, 1] under the key `samples` (or `image`, `video`, `audio`), one
example `[*shape]` or several `[N, *shape]`.
"""

import os

import numpy as np

from diffax.pipeline import images
from diffax.pipeline import kinds
from diffax.pipeline import sounds
from diffax.pipeline import videos

NPZ_KEYS = ("samples", "image", "video", "audio")


def save_samples(path: str, samples: np.ndarray, data_config, *, ncols=None, labels=None,
                 arrays: dict | None = None) -> tuple:
  """Writes samples of `config.data`'s kind beside `path` (a PNG); `arrays` go into the .npz
  beside `samples` (e.g. a latent model's `latents`), by key. `labels` (images only: one
  string per image, e.g. its prompt) lays the grid out one labelled row per label.

  Returns:
    The paths written: `(png, npz, ...)`, then the GIF (video) or the WAV of every clip
    (audio).
  """
  kind = kinds.kind(data_config)
  if labels is not None and kind != "image":
    raise ValueError(f"labelled grids are for images, not config.data.kind={kind!r}")
  if kind == "video":
    return videos.save_samples(path, samples, ncols=ncols, arrays=arrays)
  if kind == "audio":
    return sounds.save_samples(path, samples, sample_rate=kinds.sample_rate(data_config),
                               ncols=ncols, arrays=arrays)
  return images.save_samples(path, samples, ncols=ncols, labels=labels, arrays=arrays)


def load(path: str, data_config, *, name: str, mask: bool = False) -> np.ndarray:
  """Reads the examples a user gives (an image, clip or mask to edit) as `[N, *shape]`.

  Args:
    path: the file (see the module docstring for the formats of each kind).
    data_config: `config.data` of the run (its kind and example shape).
    name: the option the file came from, for messages (e.g. "--init_image").
    mask: read a mask: raw values (nonzero = known), 1 channel accepted for any C.

  Returns:
    float32 `[N, *shape]` (`[N, *shape[:-1], 1]` for a 1-channel mask). A WAV clip is cut to
    the model's length or zero-padded to it, as the training data are.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a format this kind does not read, or a shape that does not fit the model.
  """
  kind = kinds.kind(data_config)
  shape = kinds.sample_shape(data_config)
  if kind == "image":
    return images.load_image(path, shape, name=name, mask=mask)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{name}={path}: no such file")
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npz":
    with np.load(path) as npz:
      keys = [k for k in NPZ_KEYS if k in npz]
      if not keys:
        raise ValueError(f"{name}={path}: an .npz needs one of the keys {list(NPZ_KEYS)}, got "
                         f"{sorted(npz.keys())}")
      array = np.asarray(npz[keys[0]], np.float32)
  elif kind == "video" and ext == ".gif":
    array = videos.read_gif(path, shape[-1])
    if mask:
      array = (array + 1.0) * 127.5  # raw values: nonzero = known
  elif kind == "audio" and ext == ".wav":
    array, rate = sounds.read_wav(path)
    if rate != kinds.sample_rate(data_config):
      raise ValueError(f"{name}={path} is sampled at {rate} Hz; the model's clips are "
                       f"{kinds.sample_rate(data_config)} Hz (config.data.sample_rate)")
    array = _fit_length(array, shape[0])
    if array.shape[-1] != shape[-1] and not mask:
      array = np.broadcast_to(array.mean(-1, keepdims=True), shape).copy()
  else:
    allowed = {"video": ".gif or .npz", "audio": ".wav or .npz"}[kind]
    raise ValueError(f"{name}={path}: a {kind} model reads {allowed} files")
  return _check(array, shape, name=name, path=path, mask=mask)


def _fit_length(clip: np.ndarray, length: int) -> np.ndarray:  # [L', C] -> [length, C]
  clip = clip[:length]
  return np.pad(clip, ((0, length - len(clip)), (0, 0)))


def _check(array, shape, *, name, path, mask):
  shape = tuple(shape)
  if array.ndim == len(shape) - 1 and shape[-1] == 1:
    array = array[..., None]  # no channel axis: one channel
  array = array[None] if array.ndim == len(shape) else array
  shapes = [shape] + ([shape[:-1] + (1,)] if mask else [])
  if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) not in shapes:
    raise ValueError(f"{name}={path} has shape {array.shape}; the model's examples are "
                     f"{shape}: give {shape} or [N, {', '.join(map(str, shape))}]")
  return array
