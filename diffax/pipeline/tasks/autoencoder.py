"""The autoencoder task: the KL autoencoder of latent diffusion, the first stage of a latent model.

`config.task = "autoencoder"` trains `config.model` (`diffax.models.create_autoencoder`) on
`config.data` with the loss of `config.autoencoder` (`diffax.autoencoder_loss`). The trained
parameters are `{"autoencoder": ...}`, plus `"discriminator"` when the adversarial term is on
(`disc_weight > 0`): both players live in the one train state and are updated by the one
optimizer from one gradient (see `diffax.autoencoder_loss`), so checkpoints, exact resume,
multi-host training and preemption are `train.train_and_evaluate`'s as for every task. A latent
diffusion run loads the EMA of `params["autoencoder"]` (`diffax.pipeline.latent`).

Training grids show held-out images (`config.autoencoder.eval_split`) in one row and their
reconstructions (decoded posterior means, EMA params) in the row below; the held-out PSNR is
reported beside the grid's path. The logged metrics are the training batches' `rec`, `mse`,
`psnr` and `kl` (and the GAN's terms).
"""

import functools

import jax
import numpy as np

from diffax import autoencoder_loss
from diffax.pipeline import build
from diffax.pipeline import images
from diffax.pipeline import kinds
from diffax.pipeline import parallel
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir


class AutoencoderTask:
  """Trains the autoencoder of `config.model` to reconstruct `config.data`'s images."""

  def __init__(self, config):
    kind = kinds.kind(config.data)
    if kind != "image":
      raise ValueError(f"config.task='autoencoder' on config.data.kind={kind!r}: the "
                       f"autoencoder takes images; train a diffusion model on the clips")
    self.config = config
    self.autoencoder = build.autoencoder(config)
    self.discriminator = build.discriminator(config)
    self.loss_fn = build.autoencoder_loss_fn(config, self.autoencoder, self.discriminator)
    self.frozen = self.preprocess = None  # it trains all it uses
    self._held_out = None

  def init_fn(self, rng: jax.Array) -> dict:
    """The trained parameters: `{"autoencoder"}` (+ `"discriminator"` with the GAN term)."""
    return autoencoder_loss.init_params(self.autoencoder, self.discriminator, rng)

  def check(self) -> None:
    """Nothing beyond what building the task checked."""

  def prepare(self, workdir: Workdir, mesh):
    """Reads the held-out images of the grids (a bad split or count fails here, before the run
    writes anything). Returns the config to save."""
    del workdir, mesh
    self.held_out_images()
    return self.config

  def device_batch(self, host_batch: dict, step: int, mesh) -> dict:
    """`{"image"}` -> the loss's `{"x"}` on the devices, plus `"step"` for the GAN's warm-up."""
    batch = {"x": host_batch["image"]}
    if self.discriminator is not None:
      batch["step"] = np.full((len(host_batch["image"]),), step, np.int32)
    return parallel.shard_batch(batch, mesh)

  def evaluator(self, workdir: Workdir, mesh):
    """None: an autoencoder's measure of progress is its held-out reconstructions, in the grids
    (`write_samples`) and benchmarks/latent_quality.py."""
    del workdir, mesh
    return None

  def held_out_images(self) -> np.ndarray:
    """The first `config.autoencoder.num_images` images of the eval split, `[N, H, W, C]`."""
    if self._held_out is None:
      from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
      a = self.config.autoencoder
      try:
        self._held_out = data.load_eval_images(self.config, a.num_images,
                                               split=a.eval_split)["image"]
      except ValueError as e:
        raise ValueError(f"config.autoencoder.eval_split={a.eval_split!r}, num_images="
                         f"{a.num_images}: {e}") from e
    return self._held_out

  def reconstruct(self, params, images_: np.ndarray) -> np.ndarray:
    """Decoded posterior means of `images_` `[N, H, W, C]` under `params["autoencoder"]`."""
    return np.asarray(_reconstruct(self.autoencoder, params["autoencoder"], images_))

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> str:
    """Held-out images above their reconstructions from `params` (the EMA params); process 0
    writes the grid, and the `.npz` beside it holds `inputs` and `reconstructions`.

    Returns:
      The PNG path.
    """
    del mesh  # a few images: one device
    inputs = self.held_out_images()
    reconstructions = self.reconstruct(jax.device_get(params), inputs)
    psnr = float(np.mean(autoencoder_loss.psnr(inputs, reconstructions)))
    path = workdir.sample_grid(step)
    if jax.process_index() == 0:
      ncols = min(8, len(inputs))
      images.save_samples(path, interleave_rows(inputs, reconstructions, ncols), ncols=ncols,
                          arrays={"inputs": inputs, "reconstructions": reconstructions})
    report(f"step {step}: held-out reconstruction PSNR {psnr:.2f} dB "
           f"({len(inputs)} images of split {self.config.autoencoder.eval_split!r})")
    return path


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(ae, params, x):
  mean, _ = ae.encode(params, x)
  return ae.decode(params, mean)


def interleave_rows(top: np.ndarray, bottom: np.ndarray, ncols: int) -> np.ndarray:
  """`[N, ...]` twice -> `[2N', ...]` whose rows of `ncols` alternate: top[0:ncols],
  bottom[0:ncols], top[ncols:2 ncols], ... (N padded to a multiple of ncols with -1, black)."""
  n = len(top)
  pad = -n % ncols
  fill = lambda a: np.concatenate([a, -np.ones((pad, *a.shape[1:]), a.dtype)])
  rows = lambda a: fill(a).reshape(-1, ncols, *a.shape[1:])
  return np.stack([rows(top), rows(bottom)], axis=1).reshape(-1, *top.shape[1:])
