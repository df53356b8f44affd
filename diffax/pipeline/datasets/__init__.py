"""TFDS builders embedded in diffax. Importing this package registers their names with TFDS.

  digits          scikit-learn's 8x8 handwritten digits (real images, shipped in its wheel)
  moving_digits   SYNTHETIC video: a digit of `digits` bouncing in a 16x16 frame, 8 frames
  tones           SYNTHETIC audio: notes of 8 pitches at 8 kHz, labelled by pitch
  digits_text, digits_pairs_text, mnist_text, mnist_pairs_text
                  captioned digits for text-to-image (`captioned`, `captions`)

Each embedded one prepares offline in seconds and deterministically (the MNIST captions need
TFDS `mnist`). `diffax.pipeline.data` imports this package; `import diffax` does not.
"""

from diffax.pipeline.datasets import captioned
from diffax.pipeline.datasets import digits
from diffax.pipeline.datasets import moving_digits
from diffax.pipeline.datasets import tones
