"""unCLIP (DALL-E 2) from its trained stages: contrastive embedding, prior, decoder.

  contrastive (configs/digits_clip.py)    images and captions -> unit-norm embeddings [N, D]
  prior       (configs/digits_prior.py)   text embedding -> image embedding (diffusion on [B, D])
  decoder     (configs/digits_decoder.py) image embedding -> image (a U-Net reading
                                          cond["embedding"])

Each is a run of `train.train_and_evaluate`; the prior and decoder name the contrastive run's
workdir. This module loads trained runs and chains them: a prompt goes through the prior and
then the decoder; an image's variations are the decoder's samples for its embedding.
"""

import os
from typing import Optional

import jax
import numpy as np

from diffax.pipeline import checkpoint
from diffax.pipeline import conditions
from diffax.pipeline import embeddings
from diffax.pipeline import images as images_lib
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.tasks import prior as prior_task
from diffax.pipeline.workdir import Workdir


class Prior:
  """A trained prior run: `sample(prompts, rng) -> f32[N, D]` unit-norm image embeddings.

  Attributes:
    workdir, config, step: the run, its saved config and the checkpoint read.
    task: its `tasks.prior.PriorTask` (network, schedule), with the contrastive run loaded.
    params: its EMA params (host).
    clip: the contrastive run (`embeddings.Contrastive`) whose embeddings it generates.
  """

  def __init__(self, workdir: Workdir, config, task, params, step: int):
    self.workdir, self.config, self.task, self.params, self.step = (workdir, config, task,
                                                                    params, step)
    self.clip = task.clip

  def sample(self, prompts, rng: jax.Array, *, guidance_scale: Optional[float] = None,
             num_steps: Optional[int] = None, batch_size: int = 0) -> np.ndarray:
    """One image embedding per prompt, `f32[N, D]`; embedding i depends on rng and i alone."""
    config = self.config
    if num_steps is not None:
      config = config.copy_and_resolve_references()
      with config.unlocked():
        config.sample.num_steps = num_steps
    return prior_task.sample_embeddings(config, self.task.model, self.task.schedule, self.clip,
                                        self.params, list(prompts), rng,
                                        guidance_scale=guidance_scale, batch_size=batch_size)


def load_prior(workdir, mesh=None, *, clip: Optional[embeddings.Contrastive] = None) -> Prior:
  """Loads the prior run in `workdir` and its contrastive run (or `clip`, already loaded).

  Raises:
    ValueError: not a prior run; `clip` is another contrastive run than the prior's.
    FileNotFoundError: no such run, or no checkpoint.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  config = workdir.load_config()
  if config.get("task") != "prior":
    raise ValueError(f"{workdir} holds a config.task={config.get('task')!r} run, not an unCLIP "
                     f"prior (configs/digits_prior.py)")
  task = prior_task.PriorTask(config)
  params, step = checkpoint.load_ema_params(workdir, config, task.init_fn, mesh=mesh)
  task.clip = clip or embeddings.load(config.prior.contrastive_workdir, mesh)
  return Prior(workdir, config, task, jax.device_get(params), step)


class Decoder:
  """A trained unCLIP decoder run: `sample(embeddings, rng) -> images [N, H, W, C]`.

  Attributes:
    workdir, config, step: the run, its saved config and the checkpoint read.
    net, schedule: its network and noise schedule.
    params: its EMA params.
    conditioner: its `conditions.Conditioner` (the contrastive run loaded: `clip`).
    clip: the contrastive run whose image embeddings it decodes.
  """

  def __init__(self, workdir: Workdir, config, net, noise_schedule, params, step: int,
               conditioner):
    self.workdir, self.config, self.net, self.schedule = workdir, config, net, noise_schedule
    self.params, self.step, self.conditioner = params, step, conditioner
    self.clip = conditioner.clip

  def sample(self, embedding: np.ndarray, rng: jax.Array, *, num_images: Optional[int] = None,
             guidance_scale: Optional[float] = None, num_steps: Optional[int] = None,
             batch_size: Optional[int] = None, mesh=None) -> np.ndarray:
    """Images drawn for image embeddings `[n, D]` (image i gets row i % n), `[N, H, W, C]` in
    [-1, 1]; image i depends on rng and i alone."""
    config = self.config.copy_and_resolve_references()
    with config.unlocked():
      if guidance_scale is not None:
        config.sample.guidance_scale = float(guidance_scale)
      if num_steps is not None:
        config.sample.num_steps = num_steps
    num_images = len(embedding) if num_images is None else num_images
    req = sample_lib.request(config, self.net, self.schedule, num_images=num_images,
                             batch_size=batch_size or min(num_images, 100), mesh=mesh,
                             conditioner=self.conditioner, embedding=embedding)
    return np.asarray(req(self.params, rng))

  def variations(self, images: np.ndarray, rng: jax.Array, *, num_images: int,
                 **kwargs) -> np.ndarray:
    """`num_images` variations of `images` `[n, H, W, C]` (image i varies row i % n): the
    decoder's samples for their embeddings."""
    images = self.clip.check_images(images, what="the image to vary")
    return self.sample(self.clip.embed_images(images), rng, num_images=num_images, **kwargs)


def load_decoder(workdir, mesh=None) -> Decoder:
  """Loads the unCLIP decoder run in `workdir` (a diffusion run reading `cond["embedding"]`)
  and its contrastive run.

  Raises:
    ValueError: not a diffusion run conditioned on image embeddings.
  """
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  config = workdir.load_config(defaults=None)
  sample_lib.check_diffusion_run(workdir, config)
  if not config.model.get("embedding_dim"):
    raise ValueError(f"{workdir} is not an unCLIP decoder: its model reads no image embedding "
                     f"(config.model.embedding_dim; configs/digits_decoder.py)")
  net, noise_schedule, _ = sample_lib.load_model(config, None)
  params, step = sample_lib.load_ema_params(workdir, config, net, mesh=mesh)
  conditioner = conditions.Conditioner(config, net)
  return Decoder(workdir, config, net, noise_schedule, jax.device_get(params), step,
                 conditioner)


def check_stack(prior: Prior, decoder: Decoder) -> None:
  """The prior must generate the embeddings the decoder reads: one contrastive space."""
  got, want = prior.clip.embedding_dim, decoder.config.model.embedding_dim
  if got != want:
    raise ValueError(f"the prior {prior.workdir} samples {got}-d embeddings (of "
                     f"{prior.clip.workdir}) but the decoder {decoder.workdir} reads {want}-d "
                     f"ones: train both stages on the same contrastive run")
  here, there = (os.path.realpath(str(c.workdir)) for c in (prior.clip, decoder.clip))
  if here != there:
    raise ValueError(f"the prior {prior.workdir} samples embeddings of {prior.clip.workdir} but "
                     f"the decoder {decoder.workdir} reads those of {decoder.clip.workdir}: "
                     f"train both stages on the same contrastive run")


def generate(prior: Prior, decoder: Decoder, prompts, rng: jax.Array, *,
             prior_guidance: Optional[float] = None, **decoder_kwargs) -> np.ndarray:
  """Text to image: one image per prompt, prior then decoder, `[N, H, W, C]` in [-1, 1]."""
  check_stack(prior, decoder)
  prior_rng, decoder_rng = jax.random.split(rng)
  embedding = prior.sample(prompts, prior_rng, guidance_scale=prior_guidance)
  return decoder.sample(embedding, decoder_rng, **decoder_kwargs)


def is_prior_run(workdir) -> bool:
  """Whether `workdir` holds an unCLIP prior run (the first of `--workdir=PRIOR,DECODER`)."""
  workdir = workdir if isinstance(workdir, Workdir) else Workdir(os.fspath(workdir))
  return os.path.exists(workdir.config) and workdir.load_config().get("task") == "prior"


def sample_prompts(prior_dir, decoder_dir, prompts, *, num_images: int, out: str,
                   seed: int = 0, prior_guidance: Optional[float] = None,
                   decoder_overrides: Optional[dict] = None) -> tuple:
  """Text to image through an unCLIP stack; writes the grid (one labelled row per prompt) and
  the .npz (`samples` `[N, H, W, C]`, `embeddings` `[N, D]`, the prior's samples).

  Image i gets prompts[i % len(prompts)] and depends on the seed and i alone.

  Returns:
    The paths written, `(png, npz)`.
  """
  if not prompts:
    raise ValueError("an unCLIP stack draws from prompts: give --prompt or --prompts_file")
  decoder = load_decoder(decoder_dir)
  saved = Workdir(os.fspath(prior_dir)).load_config().get("prior") or {}
  same = os.path.realpath(saved.get("contrastive_workdir") or "") == os.path.realpath(
      str(decoder.clip.workdir))
  prior = load_prior(prior_dir, clip=decoder.clip if same else None)  # one copy when shared
  check_stack(prior, decoder)
  per_image = [prompts[i % len(prompts)] for i in range(num_images)]
  prior_rng, decoder_rng = jax.random.split(jax.random.key(seed))
  embedding = prior.sample(per_image, prior_rng, guidance_scale=prior_guidance)
  drawn = decoder.sample(embedding, decoder_rng, **_decoder_knobs(decoder_overrides))
  return images_lib.save_samples(out, drawn, labels=per_image,
                                 arrays={"embeddings": embedding})


def sample_variations(decoder_dir, image_path: str, *, num_images: int, out: str,
                      seed: int = 0, decoder_overrides: Optional[dict] = None) -> tuple:
  """Variations of the image(s) in `image_path` (PNG or .npz, the decoder's size): their
  embeddings decoded `num_images` times (image i varies source i % n). The grid starts with
  the sources (a row of them, when several); the .npz holds `samples` and `sources`.

  Returns:
    The paths written, `(png, npz)`.
  """
  decoder = load_decoder(decoder_dir)
  sources = images_lib.load_image(image_path, decoder.clip.image_shape, name="--variations_of")
  drawn = decoder.variations(sources, jax.random.key(seed), num_images=num_images,
                             **_decoder_knobs(decoder_overrides))
  n = len(sources)
  png = images_lib.save_grid(out, np.concatenate([sources, drawn]), ncols=n if n > 1 else None)
  npz = os.path.splitext(out)[0] + ".npz"
  np.savez_compressed(npz, samples=drawn.astype(np.float32), sources=sources)
  return png, npz


def _decoder_knobs(overrides: Optional[dict]) -> dict:
  o = {k: v for k, v in (overrides or {}).items() if v is not None}
  return {k: o[k] for k in ("guidance_scale", "num_steps", "batch_size") if k in o}
