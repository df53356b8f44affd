"""What one example of `config.data` is: an image, a video clip or an audio clip, and its shape.

  config.data.kind   shape of one example                       batch key
  "image"            (image_size, image_width, channels)        "image"
  "video"            (num_frames, image_size, image_width, channels)  "video"
  "audio"            (length, channels)                         "audio"

`config.data.num_frames` (video) and `config.data.length` / `config.data.sample_rate` (audio)
are read only for their kind; `config.data.image_width` None (the default) means square
images and frames. The data iterator yields `{kind: array, "label": labels}`; the
model's `sample_shape` is `sample_shape(config.data)`. No JAX and no TensorFlow here: both
`build` and `data` ask this module.
"""

# config.data.kind -> what the example's axes are (for messages).
KINDS = {
    "image": "(image_size, image_width, channels)",
    "video": "(num_frames, image_size, image_width, channels)",
    "audio": "(length, channels)",
}


def kind(data_config) -> str:
  """`config.data.kind`, checked ("image" when a config predates the key)."""
  value = data_config.get("kind", "image")
  if value not in KINDS:
    raise ValueError(f"config.data.kind={value!r} is unknown; choose one of {list(KINDS)}")
  return value


def _positive(data_config, field: str, what: str) -> int:
  value = data_config.get(field, None)
  if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"config.data.{field} must be an int >= 1 for config.data.kind="
                     f"{kind(data_config)!r} ({what}), got {value!r}")
  return value


def sample_shape(data_config) -> tuple:
  """The shape of one example of `config.data` (see the module docstring).

  Raises:
    ValueError: an unknown kind, or a size of that kind that is not a positive int; the
      message names the field.
  """
  k = kind(data_config)
  channels = _positive(data_config, "channels", "channels per pixel or sample")
  if k == "audio":
    return (_positive(data_config, "length", "samples per clip"), channels)
  size = image_size(data_config)
  if k == "video":
    return (_positive(data_config, "num_frames", "frames per clip"), *size, channels)
  return (*size, channels)


def image_size(data_config) -> tuple[int, int]:
  """(H, W) of the images or frames: `config.data.image_size`, and `config.data.image_width`
  (None: H, square).

  Raises:
    ValueError: a size that is not a positive int, named.
  """
  height = _positive(data_config, "image_size", "the height of the images or frames")
  if data_config.get("image_width", None) is None:
    return height, height
  return height, _positive(data_config, "image_width", "the width of the images or frames")


def sample_rate(data_config) -> int:
  """`config.data.sample_rate` of an audio config (samples per second of the WAV files).

  Raises:
    ValueError: not a positive int.
  """
  return _positive(data_config, "sample_rate", "samples per second")
