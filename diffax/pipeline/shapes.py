"""The shape of one example of `config.data`: no JAX and no TensorFlow here, so that `build`
(the model's sample_shape) and `data` (what the iterator yields) ask the same function."""

import numpy as np


def image_size(data_config) -> tuple[int, int]:
  """(H, W): `config.data.image_size`, and `config.data.image_width` (None: H, square).

  Raises:
    ValueError: a size that is not a positive int, named.
  """
  height = data_config.image_size
  width = data_config.get("image_width", None)
  width = height if width is None else width
  for field, value in (("image_size", height), ("image_width", width)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"config.data.{field} must be a positive int; got {value!r}.")
  return int(height), int(width)


def sample_shape(data_config) -> tuple[int, int, int]:
  """(H, W, C) of one image of `config.data`."""
  return (*image_size(data_config), int(data_config.channels))
