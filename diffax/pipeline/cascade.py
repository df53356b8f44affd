"""A cascade of stages (Imagen; SR3): text -> base samples -> super-resolution, each a workdir.

Every stage is a run trained on its own by `train.train_and_evaluate`; the cascade only reads
their workdirs. Stage 0 draws from noise (conditioned on the prompts when it reads text); each
later stage is a super-resolution model (`config.model.low_res_size > 0`) that takes the
previous stage's samples as `cond["low_res"]`, noised to its fixed `sample.noise_level`
(Imagen's noise-conditioning augmentation), and the prompts too when it reads text. Each stage
samples with its own `config.sample` (sampler, steps, guidance, dynamic thresholding), which
the caller may override per stage.

  stages = cascade.load([Workdir("w/base"), Workdir("w/sr")],
                        overrides=[{"threshold": 0.995}, {"noise_level": 0.1}])
  outputs = cascade.sample(stages, prompts=["a handwritten 3"], num_images=8, seed=0)
  outputs[-1]   # [8, 8, 8, 1], the last stage's images

Image i of every stage depends on the seed and i alone.
"""

import dataclasses
import math
import os
from typing import Optional, Sequence

import jax
import numpy as np

from diffax.pipeline import build
from diffax.pipeline import checks
from diffax.pipeline import conditions
from diffax.pipeline import latent
from diffax.pipeline import images as images_lib
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.workdir import Workdir

MIN_CELL = 32  # grid cells of the last stage are at least this many pixels wide


@dataclasses.dataclass
class Stage:
  """One stage: its run directory, config (with the sampling overrides applied) and model."""
  workdir: Workdir
  config: object
  net: object
  schedule: object
  conditioner: conditions.Conditioner

  @property
  def name(self) -> str:
    return self.workdir.path


def load(workdirs: Sequence[Workdir], overrides: Optional[Sequence[dict]] = None, *,
         defaults=None) -> list[Stage]:
  """Reads the stages' configs and checks that they chain.

  Args:
    workdirs: the stages' run directories, base first.
    overrides: per stage, `config.sample` fields to change (None values are ignored).
    defaults: a config whose keys fill in what older runs' configs lack
      (`Workdir.load_config`).

  Raises:
    ValueError: a cascade of fewer than two stages, a first stage that needs a low-res input,
      a later one that does not take one, or one whose low-res size is not the previous
      stage's sample size; the message names the stages.
    FileNotFoundError: a workdir without config.json.
  """
  if len(workdirs) < 2:
    raise ValueError(f"a cascade needs at least two stages (a base and a super-resolution "
                     f"model), got {len(workdirs)}: give --workdir=BASE_DIR,SR_DIR")
  overrides = list(overrides or [{}] * len(workdirs))
  stages = []
  for index, (workdir, override) in enumerate(zip(workdirs, overrides)):
    config = workdir.load_config(defaults=defaults)
    unknown = sorted(set(override) - set(config.sample))
    if unknown:
      raise ValueError(f"cascade stage {index} ({workdir}): unknown config.sample field(s) "
                       f"{unknown}; the fields are {sorted(config.sample)}")
    with config.unlocked():
      config.sample.update({k: v for k, v in override.items() if v is not None})
    if latent.enabled(config):
      raise ValueError(f"cascade stage {index} ({workdir}) is a latent diffusion run; a cascade "
                       f"chains pixel-space models (sample it alone with --workdir)")
    try:
      checks.check_sampling(config)
      net, schedule = build.model(config), build.schedule(config)
      conditioner = conditions.Conditioner(config, net)
    except ValueError as e:
      raise ValueError(f"cascade stage {index} ({workdir}): {e}") from None
    stages.append(Stage(workdir, config, net, schedule, conditioner))
  first = stages[0]
  if first.conditioner.low_res_shape is not None:
    raise ValueError(f"cascade stage 0 ({first.name}) is a super-resolution model; the first "
                     f"stage must draw images from noise (a base model)")
  for index in range(1, len(stages)):
    below, stage = stages[index - 1], stages[index]
    want, have = stage.conditioner.low_res_shape, below.net.sample_shape
    if want is None:
      raise ValueError(f"cascade stage {index} ({stage.name}) is not a super-resolution model "
                       f"(config.model.low_res_size is 0): it cannot take stage {index - 1}'s "
                       f"images")
    if tuple(want) != tuple(have):
      raise ValueError(f"cascade stage {index} ({stage.name}) upsamples "
                       f"{'x'.join(map(str, want))} images, but stage {index - 1} "
                       f"({below.name}) draws {'x'.join(map(str, have))}")
  return stages


def stage_rngs(seed: int, index: int) -> tuple[jax.Array, jax.Array]:
  """(samples key, low-res noise key) of stage `index`; stage 0 samples as sample.py would."""
  base = jax.random.key(seed)
  if index == 0:
    return base, sample_lib.low_res_rng(seed)
  return (jax.random.fold_in(base, 100 + index),
          jax.random.fold_in(sample_lib.low_res_rng(seed), index))


def sample(stages: Sequence[Stage], *, prompts: Optional[Sequence[str]] = None,
           num_images: int, batch_size: Optional[int] = None, seed: int = 0,
           class_label: Optional[int] = None, progress: bool = False) -> list[np.ndarray]:
  """Runs the cascade.

  Args:
    stages: from `load`.
    prompts: the prompts of the stages that read text (image i gets prompts[i % n]); None:
      each stage's `config.sample.prompts`.
    num_images: images per stage.
    batch_size: images per sampler call (default each stage's `config.sample.batch_size`,
      at most num_images).
    seed: image i of every stage depends on it and i alone.
    class_label: for stages that read labels (see `sample.request`).
    progress: progress bars.

  Returns:
    Each stage's images, `[num_images, *sample_shape]` float32 on the host.
  """
  mesh = parallel.create_mesh()
  outputs, low_res = [], None
  for index, stage in enumerate(stages):
    rng, noise_rng = stage_rngs(seed, index)
    size = batch_size or min(stage.config.sample.batch_size, num_images)
    text = "context" in stage.net.cond_keys
    req = sample_lib.request(stage.config, stage.net, stage.schedule, num_images=num_images,
                             batch_size=size, mesh=mesh, class_label=class_label,
                             prompts=prompts if text else (), low_res=low_res,
                             low_res_rng=noise_rng, conditioner=stage.conditioner)
    req.batch_knobs(0)
    params, _ = sample_lib.load_ema_params(stage.workdir, stage.config, stage.net, mesh=mesh)
    low_res = req(params, rng, progress=progress)
    outputs.append(low_res)
  return outputs


def save(path: str, outputs: Sequence[np.ndarray], labels=None) -> tuple[str, str, str]:
  """Writes the last stage's grid to `path` (rows labelled when `labels`, one per image), all
  stages side by side (each enlarged to the last stage's size) to `<path>_stages.png`, and
  the samples to `<path>.npz` (`samples`: the last stage; `stage_<k>`: stage k).

  Returns:
    `(png, stages_png, npz)`.
  """
  final = outputs[-1]
  png = images_lib.save_grid(path, final, labels=labels, min_cell=MIN_CELL)
  npz = os.path.splitext(path)[0] + ".npz"
  np.savez_compressed(npz, samples=final, **{f"stage_{k}": o for k, o in enumerate(outputs)})
  height = final.shape[1]
  enlarged = [np.repeat(np.repeat(o, height // o.shape[1], axis=1), height // o.shape[1],
                        axis=2) for o in outputs]
  side_by_side = np.concatenate(
      [np.pad(e, ((0, 0), (0, 0), (0, 1), (0, 0)), constant_values=1.0) for e in enlarged],
      axis=2)[:, :, :-1]
  scale = max(1, math.ceil(MIN_CELL / max(final.shape[1:3])))  # the last stage's grid scale
  stages_png = images_lib.save_grid(os.path.splitext(path)[0] + "_stages.png", side_by_side,
                                    labels=labels, min_cell=scale * max(side_by_side.shape[1:3]))
  return png, stages_png, npz
