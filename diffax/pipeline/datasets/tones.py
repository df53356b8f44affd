"""The `tones` TFDS dataset: synthetic audio of short notes, labelled by pitch.

SYNTHETIC. Each clip is 2,048 samples at 8 kHz (0.256 s, int16) of one note of the C major
scale from C5 (523.25 Hz) to C6 (1046.50 Hz): 8 pitches, the label. A note is one of three
timbres, each with its root the loudest partial (so a clip's dominant frequency is its pitch):

  pure      the root alone;
  harmonic  the root with its 2nd and 3rd harmonics at 0.3 and 0.15 of its amplitude;
  chord     the major triad on the root: the third and fifth at 0.45 and 0.35;

with a random phase per partial, a linear attack of 5..30 ms, an exponential decay with a time
constant of 80..400 ms, a peak amplitude of 0.4..0.9 and white noise of standard deviation
0.005..0.03. Building it takes a second, offline, and gives the same bytes every time. It is
the audio counterpart of `digits`: a 1-D model learns it on a CPU in minutes, and a sample's
pitch is measured exactly (`dominant_frequency`).

Features:
  audio: Audio (2048,) int16 at 8,000 Hz.
  label: ClassLabel with the note names C5 D5 E5 F5 G5 A5 B5 C6.
  frequency: float32, the root's frequency in Hz.

Splits: train 4,000 clips, test 400 (their own draws); each pitch is every 8th clip.
"""

import numpy as np
import tensorflow_datasets as tfds

SAMPLE_RATE = 8000
LENGTH = 2048
NOTE_NAMES = ("C5", "D5", "E5", "F5", "G5", "A5", "B5", "C6")
MIDI_NOTES = (72, 74, 76, 77, 79, 81, 83, 84)
PITCHES = tuple(440.0 * 2.0 ** ((m - 69) / 12) for m in MIDI_NOTES)  # Hz, equal temperament
TIMBRES = ("pure", "harmonic", "chord")
NUM_TRAIN, NUM_TEST = 4000, 400


def partials(timbre: str, root: float):
  """The (frequency, relative amplitude) pairs of a note."""
  if timbre == "pure":
    return [(root, 1.0)]
  if timbre == "harmonic":
    return [(root, 1.0), (2 * root, 0.3), (3 * root, 0.15)]
  return [(root, 1.0), (root * 2 ** (4 / 12), 0.45), (root * 2 ** (7 / 12), 0.35)]


def synthesize(label: int, rng: np.random.Generator, *, length: int = LENGTH,
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """One clip of pitch `label`, float64 [length] in [-1, 1], drawn from `rng`."""
  t = np.arange(length) / sample_rate
  timbre = TIMBRES[rng.integers(len(TIMBRES))]
  tone = sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
             for f, a in partials(timbre, PITCHES[label]))
  attack, decay = rng.uniform(0.005, 0.03), rng.uniform(0.08, 0.4)
  envelope = np.where(t < attack, t / attack, np.exp(-(t - attack) / decay))
  clip = tone * envelope
  clip *= rng.uniform(0.4, 0.9) / np.abs(clip).max()
  clip += rng.normal(0.0, rng.uniform(0.005, 0.03), length)
  return np.clip(clip, -1.0, 1.0)


def dominant_frequency(clips: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The frequency (Hz) of the largest peak of each clip's spectrum (Hann window, parabolic
  interpolation between FFT bins): `[N, L]` (or `[N, L, 1]`) -> `[N]`."""
  clips = np.asarray(clips, np.float64).reshape(len(clips), -1)
  length = clips.shape[1]
  spectrum = np.abs(np.fft.rfft(clips * np.hanning(length), axis=1))
  spectrum[:, 0] = 0.0  # no DC
  k = np.clip(np.argmax(spectrum, axis=1), 1, spectrum.shape[1] - 2)
  rows = np.arange(len(clips))
  a, b, c = (np.log(spectrum[rows, k + d] + 1e-12) for d in (-1, 0, 1))
  offset = 0.5 * (a - c) / np.where(a - 2 * b + c == 0, -1e-12, a - 2 * b + c)
  return (k + np.clip(offset, -0.5, 0.5)) * sample_rate / length


def nearest_pitch(frequency: np.ndarray):
  """The label of the pitch nearest each frequency and the distance to it in semitones."""
  semitones = 12 * np.log2(np.maximum(np.asarray(frequency, np.float64), 1e-6)[:, None]
                           / np.asarray(PITCHES)[None])
  label = np.argmin(np.abs(semitones), axis=1)
  return label, np.abs(semitones[np.arange(len(label)), label])


class Tones(tfds.core.GeneratorBasedBuilder):
  """Synthetic notes of 8 pitches (C5..C6) with envelopes, timbres and noise, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: 4,000 train and 400 test clips."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "Synthetic audio: 0.256 s notes of the C major scale C5..C6 at 8 kHz, as pure "
            "tones, with harmonics or as triads, with envelopes and noise; labelled by pitch."),
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(LENGTH,), dtype=np.int16,
                                         sample_rate=SAMPLE_RATE),
            "label": tfds.features.ClassLabel(names=NOTE_NAMES),
            "frequency": tfds.features.Scalar(dtype=np.float32),
        }),
        supervised_keys=("audio", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: synthesized.
    return {"train": self._generate_examples("train", NUM_TRAIN),
            "test": self._generate_examples("test", NUM_TEST)}

  def _generate_examples(self, split, count):
    for index in range(count):
      label = index % len(PITCHES)
      rng = np.random.default_rng([8000, int(split == "test"), index])
      clip = np.round(synthesize(label, rng) * 32767).astype(np.int16)
      yield index, {"audio": clip, "label": label, "frequency": np.float32(PITCHES[label])}
