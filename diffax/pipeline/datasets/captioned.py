"""Captioned handwritten digits, for text-to-image: TFDS builders, offline and deterministic.

  digits_text          the embedded 8x8 digits, each training image captioned 4 times
  digits_pairs_text    two embedded digits side by side, 8x16, captioned by position
  mnist_text           MNIST 28x28, one caption per image (needs TFDS `mnist` prepared)
  mnist_pairs_text     two MNIST digits side by side, 28x56

Features: `image` uint8 (H, W, 1), `label` (the digit; `10 * left + right` for pairs) and
`caption` (text, `captions`). The train split is captioned with the training templates, the
test split (from the source's held-out images) with phrasings never seen in training
(`captions.HELD_OUT_*`).

Preparing needs no network: the digits ship with scikit-learn, and the MNIST builders read the
`mnist` dataset already prepared in the same data_dir (`tfds.builder("mnist",
data_dir=...).download_and_prepare()` where there is network, once).
"""

import abc

import numpy as np
import tensorflow_datasets as tfds

from diffax.pipeline.datasets import captions
from diffax.pipeline.datasets import digits

_SPLITS = {"train": 0, "test": 1}


class _Captioned(tfds.core.GeneratorBasedBuilder):
  """Captions the images of a source (`_source`) singly or in pairs (abstract: not registered)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  PAIRS = False
  SIZE = 8
  CAPTIONS_PER_IMAGE = 1     # single digits
  NUM_PAIRS = {"train": 0, "test": 0}
  SOURCE = ""

  @abc.abstractmethod
  def _source(self, split: str):
    """(uint8 [N, S, S, 1] images, int [N] labels) of the source's split."""

  def _info(self) -> tfds.core.DatasetInfo:
    width = 2 * self.SIZE if self.PAIRS else self.SIZE
    what = ("two digits side by side, captioned by position" if self.PAIRS else
            "digits captioned from templates with paraphrases")
    return self.dataset_info_from_configs(
        description=f"{self.SOURCE}: {what}; test captions use held-out phrasings.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(self.SIZE, width, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=100 if self.PAIRS else 10),
            "caption": tfds.features.Text(),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in _SPLITS}

  def _generate_examples(self, split):
    images, labels = self._source(split)
    rng = np.random.default_rng([1234, _SPLITS[split]])
    held_out = split == "test"
    if self.PAIRS:
      templates = captions.HELD_OUT_PAIR if held_out else captions.TRAIN_PAIR
      yield from captions.pair_examples(images, labels, rng, templates=templates,
                                        num_pairs=self.NUM_PAIRS[split])
    else:
      templates = captions.HELD_OUT_SINGLE if held_out else captions.TRAIN_SINGLE
      yield from captions.single_examples(
          images, labels, rng, templates=templates,
          captions_per_image=1 if held_out else self.CAPTIONS_PER_IMAGE)


class _FromDigits(_Captioned):
  SOURCE = "scikit-learn's 8x8 digits (the embedded `digits`)"

  def _source(self, split):
    images, labels = digits.load_images()
    cut = slice(0, digits.NUM_TRAIN) if split == "train" else slice(digits.NUM_TRAIN, None)
    return images[cut], labels[cut]


class _FromMnist(_Captioned):
  SOURCE = "MNIST (TFDS `mnist`, prepared in the same data_dir)"
  SIZE = 28

  def _source(self, split):
    builder = tfds.builder("mnist", data_dir=self.data_dir_root)
    if not builder.is_prepared():
      raise ValueError(f"{self.name} is made from TFDS 'mnist', which is not prepared in "
                       f"{self.data_dir_root}: prepare it once where there is network with "
                       f"tfds.builder('mnist', data_dir={self.data_dir_root!r})"
                       f".download_and_prepare()")
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    return data["image"], data["label"]


class DigitsText(_FromDigits):
  """The embedded digits with captions: 6,000 train examples (1,500 images x 4 captions), 297
  test examples with held-out phrasings."""
  CAPTIONS_PER_IMAGE = 4


class DigitsPairsText(_FromDigits):
  """Pairs of embedded digits, 8x16: 6,000 train and 1,000 test examples."""
  PAIRS = True
  NUM_PAIRS = {"train": 6000, "test": 1000}


class MnistText(_FromMnist):
  """MNIST with one caption per image: 60,000 train, 10,000 test (held-out phrasings)."""


class MnistPairsText(_FromMnist):
  """Pairs of MNIST digits, 28x56: 60,000 train and 10,000 test examples."""
  PAIRS = True
  NUM_PAIRS = {"train": 60000, "test": 10000}
