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


def save_samples(path: str, samples: np.ndarray, **grid_kwargs) -> tuple[str, str]:
  """Writes a PNG grid to `path` and the float32 samples to `path` with suffix `.npz`.

  Args:
    path: where the PNG goes (directories are created).
    samples: `[N, H, W, C]` floats in [-1, 1].

  Returns:
    `(png_path, npz_path)`.
  """
  samples = np.asarray(samples, np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  grid = make_grid(samples, **grid_kwargs)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  npz_path = os.path.splitext(path)[0] + ".npz"
  np.savez_compressed(npz_path, samples=samples)
  return path, npz_path
