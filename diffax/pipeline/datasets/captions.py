"""Captions of handwritten digits from templates with paraphrases, and side-by-side pairs.

A digit is named by its numeral ("7") or its word ("seven"), drawn at random, inside a
template drawn at random. The `TRAIN_*` templates caption the training splits; the `HELD_OUT_*`
ones caption the test splits only, so a model that draws the right digit for them has learnt
from the frozen text encoder what the words mean, not the training strings.

Pairs (two digits side by side) are captioned by where each digit is, in either order ("a 3 to
the left of a 7" or "a 7 to the right of a 3"): word order matters, which a class label cannot
express.

Everything is a deterministic function of a numpy Generator: the builders seed one per split.
"""

import numpy as np

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_SINGLE = (
    "a handwritten {d}",
    "the digit {d}",
    "{a} {d}, drawn by hand",
    "a picture of the number {d}",
    "handwritten digit {d}",
    "an image of {a} {d}",
    "the number {d} written by hand",
    "{a} {d}",
)
HELD_OUT_SINGLE = (
    "a drawing of the digit {d}",
    "someone wrote {a} {d}",
    "a hand-drawn {d}",
    "a scribbled {d}",
)
TRAIN_PAIR = (
    "{a_l} {l} to the left of {a_r} {r}",
    "{a_r} {r} to the right of {a_l} {l}",
    "{l} on the left and {r} on the right",
    "{r} on the right and {l} on the left",
)
HELD_OUT_PAIR = (
    "on the left {a_l} {l}, on the right {a_r} {r}",
    "{a_r} {r} with {a_l} {l} on its left",
)


def name(digit: int, rng: np.random.Generator) -> str:
  """The digit as a numeral or a word, at random."""
  return str(digit) if rng.random() < 0.5 else WORDS[digit]


def article(word: str) -> str:
  """"an" before "8", "eight" (the vowel sounds among the digits), else "a"."""
  return "an" if word in ("8", "eight") else "a"


def fill(template: str, word: str) -> str:
  return template.format(d=word, a=article(word))


def single(digit: int, rng: np.random.Generator, templates=TRAIN_SINGLE) -> str:
  """A caption of one digit: a random template of `templates`, numeral or word."""
  word = name(digit, rng)
  return fill(templates[rng.integers(len(templates))], word)


def pair(left: int, right: int, rng: np.random.Generator, templates=TRAIN_PAIR) -> str:
  """A caption of `left` beside `right`: a random template of `templates`."""
  l, r = name(left, rng), name(right, rng)
  template = templates[rng.integers(len(templates))]
  return template.format(l=l, r=r, a_l=article(l), a_r=article(r))


def single_examples(images, labels, rng, *, templates, captions_per_image):
  """Yields `(key, example)` with each image captioned `captions_per_image` times."""
  for index in range(len(images)):
    for k in range(captions_per_image):
      yield f"{index}_{k}", {"image": images[index], "label": int(labels[index]),
                             "caption": single(int(labels[index]), rng, templates)}


def pair_examples(images, labels, rng, *, templates, num_pairs):
  """Yields `(key, example)`: `num_pairs` images of two random digits side by side (W doubled),
  label `10 * left + right`."""
  for index in range(num_pairs):
    i, j = rng.integers(len(images), size=2)
    left, right = int(labels[i]), int(labels[j])
    yield index, {"image": np.concatenate([images[i], images[j]], axis=1),
                  "label": 10 * left + right,
                  "caption": pair(left, right, rng, templates)}
