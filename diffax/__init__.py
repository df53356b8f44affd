"""diffax: diffusion models in JAX/Flax, from a laptop CPU to a TPU pod.

The library (shared/API.md is its public face): pure functions and Flax modules, keyword
arguments and arrays, no config objects and no files.

  diffax.schedules     noise schedules as data
  diffax.diffusion     the forward process and the eps / x0 / v parameterizations
  diffax.conditioning  the conditioning pytree and its null condition
  diffax.losses        the denoising objective
  diffax.models        networks: models.create(...) -> (init_fn, apply_fn)
  diffax.sampling      samplers under one lax.scan, guidance, editing
  diffax.evaluation    FID/KID features and distances, bits per dimension, the ideal denoiser

The pipeline (`diffax.pipeline`: config in, workdir out; TensorFlow for data, Orbax for
checkpoints) is imported on demand and never by the library. Importing diffax has no side
effects.
"""

from diffax import conditioning
from diffax import diffusion
from diffax import evaluation
from diffax import losses
from diffax import models
from diffax import sampling
from diffax import schedules

__version__ = "0.1.0"
