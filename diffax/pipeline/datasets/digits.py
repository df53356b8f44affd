"""The `digits` TFDS dataset: scikit-learn's 8x8 handwritten digits, prepared offline.

scikit-learn ships these 1,797 images (the test part of the UCI "Optical Recognition of
Handwritten Digits" data set, 8x8 blocks of counts 0..16) inside its wheel, so preparing this
dataset needs no network and takes about a second. It is the default dataset of diffax: a model
trains on it on a laptop CPU in minutes.

Features:
  image: uint8 (8, 8, 1), the count v in 0..16 scaled to round(v * 255 / 16) in 0..255
    (round half to even; the only tie is v = 8 -> 128).
  label: ClassLabel(10), the digit.

Splits, cut in scikit-learn's order (TFDS then stores each split in its own shuffled order):
  train: the first 1,500 images (each digit 146..153 times).
  test: the last 297 images (each digit 27..33 times), held out for evaluation.
  Use split "train+test" for all 1,797.

Defining the class registers the name "digits" with TFDS (TFDS registers every builder subclass);
`diffax.pipeline.data` imports this module, so `tfds.builder("digits")` works once it is
imported. `import diffax` alone does not import it.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500  # the first NUM_TRAIN images are "train", the rest "test"


def load_images():
  """Returns scikit-learn's digits as (uint8 [1797, 8, 8, 1] in 0..255, int64 [1797] labels)."""
  from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  digits = sk_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: train = first 1,500, test = last 297."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "8x8 images of handwritten digits shipped with scikit-learn "
            "(sklearn.datasets.load_digits), counts 0..16 scaled to 0..255."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        citation=(
            "@misc{optdigits, author={Alpaydin, E. and Kaynak, C.}, year={1998}, "
            "title={Optical Recognition of Handwritten Digits}, "
            "howpublished={UCI Machine Learning Repository}}"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the data ship with scikit-learn.
    return {
        "train": self._generate_examples(0, NUM_TRAIN),
        "test": self._generate_examples(NUM_TRAIN, None),
    }

  def _generate_examples(self, start, stop):
    images, labels = load_images()
    for index in range(len(images))[start:stop]:
      yield index, {"image": images[index], "label": labels[index]}
