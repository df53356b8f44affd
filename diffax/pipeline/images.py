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


def labelled_grid(images: np.ndarray, labels, *, min_cell: int = 32,
                  max_label_chars: int = 48) -> np.ndarray:
  """A grid with one row per distinct label (in order of first appearance), the label written
  on the row's left: the images of a prompt side by side.

  Args:
    images: `[N, H, W, C]` in [-1, 1].
    labels: N strings, one per image.

  Returns:
    uint8 `[rows * H', text + cols * W', C]`.
  """
  from PIL import ImageDraw, ImageFont  # pylint: disable=g-import-not-at-top
  order = list(dict.fromkeys(labels))
  rows = [[i for i, label in enumerate(labels) if label == row] for row in order]
  ncols = max(len(r) for r in rows)
  cells = np.full((len(rows) * ncols, *images.shape[1:]), -1.0, np.float32)
  for r, members in enumerate(rows):
    cells[r * ncols:r * ncols + len(members)] = images[members]
  cells = make_grid(cells, ncols=ncols, min_cell=min_cell)
  cell_h = (cells.shape[0] - 1) // len(rows)
  font = ImageFont.load_default(size=max(10, min(16, cell_h // 3)))
  texts = [t if len(t) <= max_label_chars else t[:max_label_chars - 3] + "..." for t in order]
  width = max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font))
              for t in texts) + 8
  canvas = Image.new("L", (width, cells.shape[0]), 255)
  draw = ImageDraw.Draw(canvas)
  for r, t in enumerate(texts):
    draw.text((4, 1 + r * cell_h + cell_h // 2), t, fill=0, font=font, anchor="lm")
  text = np.asarray(canvas)[..., None]
  text = np.repeat(text, cells.shape[-1], axis=-1)
  return np.concatenate([text, cells], axis=1)


def save_grid(path: str, samples: np.ndarray, *, labels=None, **grid_kwargs) -> str:
  """Writes a PNG grid of `[N, H, W, C]` samples in [-1, 1] to `path` (directories created).

  Args:
    labels: None, or one string per sample (e.g. its prompt): a row per label, written on its
      left (`labelled_grid`).
    **grid_kwargs: `make_grid`'s keywords (with labels, only min_cell).
  """
  samples = np.asarray(samples, np.float32)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if labels is not None:
    grid = labelled_grid(samples, list(labels),
                         **{k: v for k, v in grid_kwargs.items() if k == "min_cell"})
  else:
    grid = make_grid(samples, **grid_kwargs)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path


def save_samples(path: str, samples: np.ndarray, *, arrays: dict | None = None,
                 **grid_kwargs) -> tuple[str, str]:
  """Writes a PNG grid to `path` (`save_grid`, same keywords) and the float32 samples to
  `path` with suffix `.npz` (key `samples`).

  Args:
    arrays: more arrays for the .npz beside `samples` (e.g. `latents`), by key.

  Returns:
    `(png_path, npz_path)`.
  """
  samples = np.asarray(samples, np.float32)
  save_grid(path, samples, **grid_kwargs)
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
    raise ValueError(f"{name}={path} has shape {array.shape}; the model takes "
                     f"{shape[0]}x{shape[1]} images with {shape[2]} channel(s): give [H, W, C] "
                     f"or [N, H, W, C] of that size")
  return array if array.ndim == 4 else array[None]
