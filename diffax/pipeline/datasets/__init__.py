"""TFDS builders embedded in diffax. Importing this package registers their names with TFDS.

`diffax.pipeline.data` imports it; `import diffax` does not.
"""

from diffax.pipeline.datasets import digits
