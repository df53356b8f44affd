"""Saving audio samples for people to listen to and look at: WAV files and a picture of each
clip's waveform over its spectrogram, drawn with numpy (no plotting library).

`save_samples(path, clips, sample_rate=...)` writes, for `[N, L, C]` clips in [-1, 1]:

  path (PNG)          one panel per clip, tiled: the waveform (min/max envelope per pixel
                      column) above the log-magnitude spectrogram (low frequencies at the bottom)
  path.wav            every clip, one after another with 0.1 s of silence between them
  path_wav/NNNN.wav   each clip alone
  path.npz            the float32 clips (key `samples`)
"""

import math
import os
import wave

import numpy as np
from PIL import Image

from diffax.pipeline import images

PANEL_WIDTH = 256
WAVE_HEIGHT = 48
SPECTRUM_HEIGHT = 96
GAP_SECONDS = 0.1
# Anchors of a dark-to-bright colormap (black, purple, red, orange, pale yellow) for spectrograms.
_COLORS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]],
                   np.float64)


def to_int16(clip: np.ndarray) -> np.ndarray:
  """Floats in [-1, 1] (clipped) -> int16 PCM."""
  return np.round(np.clip(np.asarray(clip, np.float64), -1.0, 1.0) * 32767).astype(np.int16)


def write_wav(path: str, clip: np.ndarray, sample_rate: int) -> str:
  """Writes `[L]` or `[L, C]` floats in [-1, 1] as a 16-bit PCM WAV file."""
  clip = np.asarray(clip)
  clip = clip[:, None] if clip.ndim == 1 else clip
  with wave.open(path, "wb") as f:
    f.setnchannels(clip.shape[1])
    f.setsampwidth(2)
    f.setframerate(int(sample_rate))
    f.writeframes(to_int16(clip).astype("<i2").tobytes())
  return path


def read_wav(path: str) -> tuple[np.ndarray, int]:
  """A 16-bit PCM WAV file as (float32 `[L, C]` in [-1, 1), sample rate).

  Raises:
    ValueError: not a 16-bit PCM WAV file.
  """
  try:
    with wave.open(path, "rb") as f:
      width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
      frames = f.readframes(f.getnframes())
  except (wave.Error, EOFError) as e:
    raise ValueError(f"{path} is not a PCM WAV file ({e})") from None
  if width != 2:
    raise ValueError(f"{path} has {8 * width}-bit samples; diffax reads 16-bit PCM WAV files")
  pcm = np.frombuffer(frames, "<i2").reshape(-1, channels)
  return pcm.astype(np.float32) / 32768.0, rate


def spectrogram(clip: np.ndarray, *, n_fft: int = 256, hop: int = 32) -> np.ndarray:
  """The log-magnitude short-time Fourier transform of a mono clip `[L]`: `[n_fft/2 + 1, F]`
  in dB relative to the loudest bin (Hann window; frames past the end zero-padded)."""
  clip = np.asarray(clip, np.float64)
  n_frames = max(1, math.ceil((len(clip) - n_fft) / hop) + 1) if len(clip) > n_fft else 1
  padded = np.pad(clip, (0, max(0, (n_frames - 1) * hop + n_fft - len(clip))))
  index = np.arange(n_fft)[None] + hop * np.arange(n_frames)[:, None]  # [F, n_fft]
  magnitude = np.abs(np.fft.rfft(padded[index] * np.hanning(n_fft), axis=1)).T
  return 20 * np.log10(np.maximum(magnitude, 1e-10) / max(magnitude.max(), 1e-10))


def colormap(values: np.ndarray) -> np.ndarray:
  """Values in [0, 1] -> uint8 RGB along `_COLORS`."""
  x = np.clip(values, 0.0, 1.0) * (len(_COLORS) - 1)
  low = np.minimum(np.floor(x).astype(int), len(_COLORS) - 2)
  frac = (x - low)[..., None]
  return np.round(_COLORS[low] * (1 - frac) + _COLORS[low + 1] * frac).astype(np.uint8)


def panel(clip: np.ndarray, *, width: int = PANEL_WIDTH, wave_height: int = WAVE_HEIGHT,
          spectrum_height: int = SPECTRUM_HEIGHT, floor_db: float = -60.0) -> np.ndarray:
  """A picture of one clip `[L]` or `[L, C]` (channels averaged): uint8 RGB
  `[wave_height + spectrum_height, width, 3]`, the waveform above the spectrogram."""
  clip = np.asarray(clip, np.float64)
  clip = clip.mean(-1) if clip.ndim == 2 else clip
  out = np.zeros((wave_height + spectrum_height, width, 3), np.uint8)
  # Waveform: each pixel column spans the min..max of its samples; +1 at the top, -1 at the
  # bottom, a grey zero line.
  out[:wave_height] = 255
  out[wave_height // 2, :] = 200
  columns = np.array_split(np.clip(clip, -1, 1), width) if len(clip) >= width else [
      clip[[min(len(clip) - 1, i * len(clip) // width)]] for i in range(width)]
  to_row = lambda v: int(round((1 - v) / 2 * (wave_height - 1)))
  for x, samples in enumerate(columns):
    top, bottom = to_row(samples.max()), to_row(samples.min())
    out[top:bottom + 1, x] = (30, 60, 160)
  # Spectrogram: dB from floor_db to 0, resized to the panel (nearest), low frequencies last.
  db = spectrogram(clip)[::-1]  # [bins, frames], highest frequency first
  rows = np.minimum(np.arange(spectrum_height) * db.shape[0] // spectrum_height,
                    db.shape[0] - 1)
  cols = np.minimum(np.arange(width) * db.shape[1] // width, db.shape[1] - 1)
  out[wave_height:] = colormap((db[rows][:, cols] - floor_db) / -floor_db)
  return out


def panels(clips: np.ndarray, *, ncols=None, pad: int = 2) -> np.ndarray:
  """Tiles the panels of `[N, L, C]` clips into one uint8 RGB image, white between them."""
  pictures = np.stack([panel(c) for c in clips]).astype(np.float32) / 127.5 - 1.0
  return images.make_grid(pictures, ncols=ncols or min(4, len(clips)), pad=pad, min_cell=1)


def save_samples(path: str, clips: np.ndarray, *, sample_rate: int,
                 ncols=None, arrays: dict | None = None) -> tuple[str, str, str]:
  """Writes the panels to `path` (PNG), the clips to WAV files and the floats to `.npz`.

  Args:
    path: where the PNG goes (directories are created).
    clips: `[N, L, C]` floats in [-1, 1].
    sample_rate: samples per second of the WAV files.
    ncols: panels per row (default: up to 4).
    arrays: more arrays for the .npz beside `samples`, by key.

  Returns:
    `(png_path, npz_path, wav_path)`; the single clips are in the folder `<stem>_wav/`.
  """
  clips = np.asarray(clips, np.float32)
  if clips.ndim != 3:
    raise ValueError(f"expected audio clips shaped [N, L, C], got {clips.shape}")
  stem = os.path.splitext(path)[0]
  os.makedirs(stem + "_wav", exist_ok=True)
  Image.fromarray(panels(clips, ncols=ncols)).save(path)
  gap = np.zeros((round(GAP_SECONDS * sample_rate), clips.shape[-1]), np.float32)
  joined = np.concatenate([part for clip in clips for part in (clip, gap)][:-1])
  write_wav(stem + ".wav", joined, sample_rate)
  for i, clip in enumerate(clips):
    write_wav(os.path.join(stem + "_wav", f"{i:04d}.wav"), clip, sample_rate)
  np.savez_compressed(stem + ".npz", samples=clips, **images.npz_arrays(arrays))
  return path, stem + ".npz", stem + ".wav"
