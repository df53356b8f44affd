"""Saving samples for people to look at: a PNG grid and the raw float32 array."""

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps images in [-1, 1] to uint8 [0, 255], clipping what lies outside."""
  return np.round((np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5).astype(
      np.uint8)


def make_grid(images: np.ndarray, *, ncols: int | None = None, pad: int = 1,
              min_cell: int = 32) -> np.ndarray:
  """Tiles `[N, H, W, C]` images in [-1, 1] into one uint8 image `[rows*H', cols*W', C]`.

  Small images are scaled up by an integer factor (nearest neighbour) so each cell is at least
  `min_cell` pixels wide: an 8x8 digit is unreadable at its own size.
  """
  images = to_uint8(images)
  if images.ndim != 4:
    raise ValueError(f"expected images shaped [N, H, W, C], got {images.shape}")
  n, h, w, c = images.shape
  scale = max(1, math.ceil(min_cell / max(h, w)))
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
  ncols = ncols or math.ceil(math.sqrt(n))
  nrows = math.ceil(n / ncols)
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_samples(path: str, samples: np.ndarray, *, arrays: dict | None = None,
                 **grid_kwargs) -> tuple[str, str]:
  """Writes a PNG grid to `path` and the float32 samples to `path` with suffix `.npz`.

  Args:
    path: where the PNG goes (directories are created).
    samples: `[N, H, W, C]` floats in [-1, 1].
    arrays: more arrays for the .npz beside `samples` (e.g. `latents`), by key.

  Returns:
    `(png_path, npz_path)`.
  """
  samples = np.asarray(samples, np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  grid = make_grid(samples, **grid_kwargs)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  npz_path = os.path.splitext(path)[0] + ".npz"
  np.savez_compressed(npz_path, samples=samples, **npz_arrays(arrays))
  return path, npz_path


def npz_arrays(arrays: dict | None) -> dict:
  """Extra arrays for a samples .npz, float32, by key (`samples` is reserved)."""
  if arrays and "samples" in arrays:
    raise ValueError("arrays: the key 'samples' is the samples' own")
  return {k: np.asarray(v, np.float32) for k, v in (arrays or {}).items()}


def load_image(path: str, shape, *, name: str = "image", mask: bool = False) -> np.ndarray:
  """Reads images a user gives: a PNG (8-bit, mapped to [-1, 1]; a mask as its raw values) or
  an .npz with key `samples` or `image` (floats in [-1, 1]).

  Args:
    path: the file.
    shape: the model's image shape `(H, W, C)`.
    name: the option the file came from, for messages (e.g. "--init_image").
    mask: read a mask: 1 channel is accepted for any C.

  Returns:
    float32 `[N, H, W, C]` (or `[N, H, W, 1]` for a 1-channel mask).

  Raises:
    FileNotFoundError: no such file.
    ValueError: a file without the expected key, or of another size than the model's.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{name}={path}: no such file")
  if path.endswith(".npz"):
    with np.load(path) as npz:
      keys = [k for k in ("samples", "image") if k in npz]
      if not keys:
        raise ValueError(f"{name}={path}: an .npz needs the key 'samples' or 'image', got "
                         f"{sorted(npz.keys())}")
      array = np.asarray(npz[keys[0]], np.float32)
  else:
    try:
      pil = Image.open(path)
    except OSError as e:
      raise ValueError(f"{name}={path} is not an image PIL can read ({e})") from None
    array = np.asarray(pil.convert("L" if shape[-1] == 1 else "RGB"), np.float32)
    array = array[..., None] if array.ndim == 2 else array
    if not mask:
      array = array / 127.5 - 1.0  # uint8 [0, 255] -> [-1, 1]
  if array.ndim == len(shape) - 1 and shape[-1] == 1:
    array = array[..., None]  # [H, W] -> [H, W, 1]
  channels_ok = array.shape[-1] == shape[-1] or (mask and array.shape[-1] == 1)
  if array.ndim not in (3, 4) or tuple(array.shape[-3:-1]) != tuple(shape[:2]) or (
      not channels_ok):
    raise ValueError(f"{name}={path} has shape {array.shape}; the model draws "
                     f"{shape[0]}x{shape[1]} images with {shape[2]} channel(s): give [H, W, C] "
                     f"or [N, H, W, C] of that size")
  return array if array.ndim == 4 else array[None]
