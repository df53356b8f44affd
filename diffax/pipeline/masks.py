"""Inpainting masks a user writes on the command line, for video and audio.

  --known_frames=0-3        video: frames kept from --init_image (0-based; a-b is inclusive,
                            lists join with commas: "0,7" keeps the ends and draws the middle)
  --known_samples=:800,1200:
                            audio: samples kept, as half-open Python slices start:end (either
                            end may be left out), joined with commas

Frame prediction keeps the first frames and draws the rest; frame interpolation keeps the
first and last; audio infilling keeps everything but a span. Each returns a mask
`[1, *shape[:-1], 1]` of 1.0 (known) and 0.0 (drawn), as `--mask` files give.
"""

import numpy as np


def _ints(parts, spec: str, flag: str) -> list:
  try:
    return [int(part) for part in parts]
  except ValueError:
    raise ValueError(f"{flag}={spec!r} is not a list of integers") from None


def known_frames(spec: str, shape, *, flag: str = "--known_frames") -> np.ndarray:
  """The mask of the frames listed in `spec` ("0-3", "0,7", "0-1,6-7") for clips `shape`
  `(T, H, W, C)`.

  Raises:
    ValueError: a malformed spec, a frame outside 0..T-1, or every frame known (nothing to
      draw); the message names the flag.
  """
  if len(shape) != 4:
    raise ValueError(f"{flag} is for video models; this model's examples are {tuple(shape)}")
  frames = shape[0]
  known = np.zeros(frames, bool)
  for item in filter(None, (s.strip() for s in spec.split(","))):
    first, _, last = item.partition("-")
    first, last = _ints([first, last or first], spec, flag)
    if not 0 <= first <= last < frames:
      raise ValueError(f"{flag}={spec!r}: {item!r} is not a range of frames in 0..{frames - 1} "
                       f"(the model draws {frames} frames)")
    known[first:last + 1] = True
  if not known.any():
    raise ValueError(f"{flag}={spec!r} names no frame; give e.g. {flag}=0-{frames // 2 - 1}")
  if known.all():
    raise ValueError(f"{flag}={spec!r} keeps all {frames} frames: nothing is left to draw")
  mask = np.broadcast_to(known[:, None, None, None], (*shape[:-1], 1))
  return mask.astype(np.float32)[None]


def known_samples(spec: str, shape, *, flag: str = "--known_samples") -> np.ndarray:
  """The mask of the samples in the slices of `spec` (":800,1200:") for clips `shape` `(L, C)`.

  Raises:
    ValueError: a malformed spec, a slice outside 0..L or empty, or every sample known; the
      message names the flag.
  """
  if len(shape) != 2:
    raise ValueError(f"{flag} is for audio models; this model's examples are {tuple(shape)}")
  length = shape[0]
  known = np.zeros(length, bool)
  for item in filter(None, (s.strip() for s in spec.split(","))):
    if ":" not in item:
      raise ValueError(f"{flag}={spec!r}: {item!r} is not a slice start:end")
    start, _, stop = item.partition(":")
    start, stop = _ints([start or "0", stop or str(length)], spec, flag)
    if not 0 <= start < stop <= length:
      raise ValueError(f"{flag}={spec!r}: {item!r} is not a non-empty slice of 0..{length} "
                       f"(the model draws {length} samples)")
    known[start:stop] = True
  if not known.any():
    raise ValueError(f"{flag}={spec!r} names no sample; give e.g. {flag}=:{length // 2}")
  if known.all():
    raise ValueError(f"{flag}={spec!r} keeps all {length} samples: nothing is left to draw")
  return known[None, :, None].astype(np.float32)
