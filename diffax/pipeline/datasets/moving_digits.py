"""The `moving_digits` TFDS dataset: synthetic video of one embedded digit bouncing in a frame.

SYNTHETIC. Each clip is 8 frames of 16x16 pixels, black (0) except for one of scikit-learn's
8x8 handwritten digits (the embedded `digits` dataset), pasted whole at an integer position
that moves with a constant velocity and bounces off the frame's edges: a small, offline
Moving-MNIST (Srivastava et al. 2015) that a video model learns on a CPU in minutes. Building
it takes seconds and no network, and gives the same bytes every time.

Motion. The digit's top-left corner (y, x) starts uniformly in 0..8 on each axis and moves by a
velocity (vy, vx) with each component drawn from {-2, -1, 1, 2}; a corner that would leave
0..8 is reflected back in (the digit bounces): position(t) = bounce(start + velocity * t), where
bounce(u) = u mod 16 if that is <= 8, else 16 - (u mod 16).

Features:
  video: Video (8, 16, 16, 1), uint8 frames (each frame a PNG).
  label: ClassLabel(10), the digit.
  position: int32 (8, 2), the digit's top-left corner (y, x) in each frame.
  velocity: int32 (2,), (vy, vx) of the first frame.

Splits: each digit gives CLIPS_PER_DIGIT clips with their own motions.
  train: the 1,500 digits of `digits`' train split -> 6,000 clips.
  test: its 297 test digits -> 1,188 clips (held-out digits and motions).
"""

import numpy as np
import tensorflow_datasets as tfds

from diffax.pipeline.datasets import digits

NUM_FRAMES = 8
FRAME_SIZE = 16
DIGIT_SIZE = 8
MAX_POSITION = FRAME_SIZE - DIGIT_SIZE  # 8: the corner lies in 0..8 on each axis
SPEEDS = (-2, -1, 1, 2)
CLIPS_PER_DIGIT = 4


def bounce(u):
  """Reflects positions into 0..MAX_POSITION (a triangle wave of period 2 * MAX_POSITION)."""
  u = np.mod(u, 2 * MAX_POSITION)
  return np.where(u <= MAX_POSITION, u, 2 * MAX_POSITION - u)


def trajectory(start, velocity, num_frames: int = NUM_FRAMES) -> np.ndarray:
  """The corner (y, x) in each frame, int32 [num_frames, 2]."""
  t = np.arange(num_frames)[:, None]
  return bounce(np.asarray(start)[None] + np.asarray(velocity)[None] * t).astype(np.int32)


def render(digit: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """Pastes an 8x8 digit [8, 8, C] at each frame's corner: uint8 [T, 16, 16, C]."""
  frames = np.zeros((len(positions), FRAME_SIZE, FRAME_SIZE, digit.shape[-1]), np.uint8)
  for frame, (y, x) in zip(frames, positions):
    frame[y:y + DIGIT_SIZE, x:x + DIGIT_SIZE] = digit
  return frames


def motion(index: int, clip: int):
  """The (start, velocity) of clip `clip` of digit `index` (of all 1,797): a fixed draw."""
  rng = np.random.default_rng([16, index, clip])
  start = rng.integers(0, MAX_POSITION + 1, size=2)
  velocity = rng.choice(SPEEDS, size=2)
  return start, velocity


class MovingDigits(tfds.core.GeneratorBasedBuilder):
  """Synthetic 8-frame 16x16 clips of an embedded 8x8 digit bouncing around, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 4 clips per digit of `digits`' splits."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "Synthetic video: one of scikit-learn's 8x8 handwritten digits moving with a "
            "constant velocity and bouncing off the edges of a 16x16 frame, 8 frames."),
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video(shape=(NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "position": tfds.features.Tensor(shape=(NUM_FRAMES, 2), dtype=np.int32),
            "velocity": tfds.features.Tensor(shape=(2,), dtype=np.int32),
        }),
        supervised_keys=("video", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: built from the digits scikit-learn ships.
    return {
        "train": self._generate_examples(0, digits.NUM_TRAIN),
        "test": self._generate_examples(digits.NUM_TRAIN, None),
    }

  def _generate_examples(self, start, stop):
    images, labels = digits.load_images()
    for index in range(len(images))[start:stop]:
      for clip in range(CLIPS_PER_DIGIT):
        corner, velocity = motion(index, clip)
        positions = trajectory(corner, velocity)
        yield f"{index}_{clip}", {"video": render(images[index], positions),
                                  "label": labels[index], "position": positions,
                                  "velocity": velocity.astype(np.int32)}
