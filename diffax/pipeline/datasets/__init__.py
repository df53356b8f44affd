"""TFDS builders embedded in diffax. Importing this package registers their names with TFDS.

  digits                        scikit-learn's 8x8 digits (`digits`)
  digits_text, digits_pairs_text, mnist_text, mnist_pairs_text
                                captioned digits for text-to-image (`captioned`, `captions`)

`diffax.pipeline.data` imports it; `import diffax` does not.
"""

from diffax.pipeline.datasets import captioned
from diffax.pipeline.datasets import digits
