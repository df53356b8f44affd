"""Saving video samples for people to watch: an animated GIF, a PNG of every frame, the floats.

`save_samples(path, videos)` writes, for `[N, T, H, W, C]` clips in [-1, 1]:

  path (PNG)        the frames side by side: clip i is row i, frame t is column t
  path.gif          the clips playing at once, tiled like an image grid, looping
  path.npz          the float32 clips (key `samples`)
"""

import os

import numpy as np
from PIL import Image

from diffax.pipeline import images

DEFAULT_FPS = 10  # a GIF stores frame times in 1/100 s: 10 frames/s is exact


def frame_grid(videos: np.ndarray, *, min_cell: int = 32) -> np.ndarray:
  """`[N, T, H, W, C]` in [-1, 1] -> one uint8 image: row i holds clip i's T frames."""
  videos = _check(videos)
  n, t = videos.shape[:2]
  return images.make_grid(videos.reshape(n * t, *videos.shape[2:]), ncols=t, min_cell=min_cell)


def animation(videos: np.ndarray, *, ncols=None, min_cell: int = 32) -> list:
  """`[N, T, H, W, C]` in [-1, 1] -> T uint8 grids: grid t tiles frame t of every clip."""
  videos = _check(videos)
  return [images.make_grid(videos[:, t], ncols=ncols, min_cell=min_cell)
          for t in range(videos.shape[1])]


def save_gif(path: str, frames, *, fps: float = DEFAULT_FPS) -> str:
  """Writes uint8 frames `[H, W, C]` (C 1 or 3) as a looping animated GIF."""
  pil = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
  pil[0].save(path, save_all=True, append_images=pil[1:], duration=round(1000 / fps), loop=0,
              optimize=False)
  return path


def read_gif(path: str, channels: int) -> np.ndarray:
  """The frames of a GIF as float32 `[T, H, W, channels]` in [-1, 1] (channels 1 or 3)."""
  frames = []
  with Image.open(path) as gif:
    for index in range(getattr(gif, "n_frames", 1)):
      gif.seek(index)
      frame = np.asarray(gif.convert("L" if channels == 1 else "RGB"), np.float32)
      frames.append(frame[..., None] if frame.ndim == 2 else frame)
  return np.stack(frames) / 127.5 - 1.0


def save_samples(path: str, videos: np.ndarray, *, ncols=None, fps: float = DEFAULT_FPS,
                 arrays: dict | None = None) -> tuple[str, str, str]:
  """Writes the frame grid to `path` (PNG), the animation to `.gif` and the floats to `.npz`.

  Args:
    path: where the PNG goes (directories are created).
    videos: `[N, T, H, W, C]` floats in [-1, 1].
    ncols: columns of the animated grid (default: about square).
    fps: frames per second of the GIF.
    arrays: more arrays for the .npz beside `samples`, by key.

  Returns:
    `(png_path, npz_path, gif_path)`.
  """
  videos = _check(np.asarray(videos, np.float32))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  grid = frame_grid(videos)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  stem = os.path.splitext(path)[0]
  gif = save_gif(stem + ".gif", animation(videos, ncols=ncols), fps=fps)
  np.savez_compressed(stem + ".npz", samples=videos, **images.npz_arrays(arrays))
  return path, stem + ".npz", gif


def _check(videos):
  videos = np.asarray(videos)
  if videos.ndim != 5:
    raise ValueError(f"expected videos shaped [N, T, H, W, C], got {videos.shape}")
  return videos
