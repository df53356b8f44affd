"""diffax: diffusion models in JAX/Flax, from a laptop CPU to a TPU pod.

The public API (shared/API.md): `diffax.schedules`, `diffax.diffusion`, `diffax.losses`,
`diffax.sampling`, `diffax.models`. The training pipeline (`diffax.train`) and the data
pipeline (`diffax.data`, which imports TensorFlow) are imported on demand. Importing diffax has
no side effects.
"""

from diffax import diffusion
from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules

__version__ = "0.1.0"
