"""TFDS builders embedded in diffax. Importing this package registers their names with TFDS.

`diffax.data` imports it; `import diffax` does not.
"""

from diffax.datasets import digits
