"""The prior task: unCLIP's diffusion prior, from a caption's text embedding to an image embedding.

`config.task = "prior"` trains a denoiser of vectors (`config.model`, `name = "mlp"`:
`diffax.models.mlp`) on the image embeddings of `config.data`'s images, conditioned on the text
embeddings of their captions, both from the contrastive run `config.prior.contrastive_workdir`
(`embeddings.load`). It is diffusion as any other run: the same schedules, loss
(`config.diffusion`, condition dropout `config.train.cond_dropout` for guidance), samplers
(`config.sample`), EMA and checkpoints, on `[B, D]` data.

The contrastive image tower is frozen: its params are the step's `frozen` argument and
`preprocess` embeds each micro-batch's images inside the step (as a latent model's autoencoder
encodes). Embeddings are unit vectors; the prior sees them times `sqrt(D)`
(`embedding_scale`), so that each component has about unit variance, as DALL-E 2 scales them;
the text condition is scaled the same way. Captions are embedded once on the host.

Its evaluation (`config.eval.every`): `eval/prior_accuracy`, the fraction of embeddings sampled
for the prompts `config.prior.prompts` (one per class) whose nearest class mean (cosine) among
the real image embeddings of `config.prior.eval_split` is the prompted class.
"""

import functools
import math
from typing import Optional

import jax
import numpy as np

from diffax import models
from diffax.pipeline import build
from diffax.pipeline import embeddings
from diffax.pipeline import parallel
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir


def embedding_scale(dim: int) -> float:
  """What unit-norm embeddings are multiplied by for the prior: sqrt(D)."""
  return math.sqrt(dim)


def contrastive_config(config):
  """The saved config of `config.prior.contrastive_workdir` (a one-line error if it is none)."""
  where = config.prior.contrastive_workdir
  if not where:
    raise ValueError("config.prior.contrastive_workdir is not set: give the workdir of a "
                     "trained contrastive stage (configs/digits_clip.py)")
  try:
    saved = Workdir(where).load_config()
  except FileNotFoundError as e:
    raise ValueError(f"config.prior.contrastive_workdir={where}: {e}") from None
  if saved.get("task") != "contrastive":
    raise ValueError(f"config.prior.contrastive_workdir={where} holds a config.task="
                     f"{saved.get('task')!r} run; the prior needs a contrastive one")
  return saved


def network(config, dim: int) -> models.Model:
  """The denoiser of `config.model` for `[B, dim]` embeddings conditioned on `[B, dim]` text."""
  m = config.model
  if m.name != "mlp":
    raise ValueError(f"config.model.name={m.name!r}: config.task='prior' trains the vector "
                     f"denoiser 'mlp'")
  with build.section("config.model"):
    return models.create("mlp", sample_shape=(dim,), dtype=m.dtype, hidden_dim=m.hidden_dim,
                         num_layers=m.num_layers, embedding_dim=dim, dropout=m.dropout)


class PriorTask:
  """Trains `network(config)` to denoise image embeddings given their captions' embeddings."""

  def __init__(self, config):
    self.config = config
    self.dim = int(contrastive_config(config).model.embedding_dim)
    self.scale = embedding_scale(self.dim)
    self.schedule = build.schedule(config)
    self.model = network(config, self.dim)
    self.init_fn = self.model.init_fn
    self.loss_fn = build.loss_fn(config, self.model, self.schedule)
    self.clip = None       # the contrastive run, loaded by `prepare`
    self.frozen = None     # its image tower's params
    self.preprocess = None

  def check(self) -> None:
    """The sampler's settings: embeddings are not pixels (no clipping to [-1, 1]), and guidance
    needs a null condition that was trained."""
    s, t = self.config.sample, self.config.train
    if s.clip_x0 or s.threshold:
      raise ValueError(f"config.sample.clip_x0={s.clip_x0}, threshold={s.threshold}: a prior "
                       f"samples embeddings (components of about unit variance), not pixels in "
                       f"[-1, 1]; set config.sample.clip_x0=False and threshold=0")
    if s.guidance_scale != 1 and not t.cond_dropout > 0:
      raise ValueError(f"config.sample.guidance_scale={s.guidance_scale} needs "
                       f"config.train.cond_dropout > 0 (the unconditional prior is trained on "
                       f"the dropped text)")
    if s.num_steps > self.config.diffusion.num_steps:
      raise ValueError(f"config.sample.num_steps={s.num_steps} exceeds config.diffusion."
                       f"num_steps={self.config.diffusion.num_steps}")
    with build.section("config.sample"):
      self.sampler(batch_size=len(self.config.prior.prompts))

  def sampler(self, batch_size: int):
    return build.sampler(self.config, self.model, self.schedule, batch_size=batch_size)

  def prepare(self, workdir: Workdir, mesh):
    """Loads the contrastive run: its image tower (frozen, in the step) and text tower."""
    del workdir
    self.clip = embeddings.load(self.config.prior.contrastive_workdir, mesh)
    shape = self.clip.image_shape
    want = tuple(build.sample_shape(self.config))
    if want != shape:
      raise ValueError(f"config.data gives {want} images; the image tower of config.prior."
                       f"contrastive_workdir={self.clip.workdir} takes {shape}")
    self.frozen = self.clip.params["image"]
    self.preprocess = functools.partial(_embed_images, self.clip.tower.apply_fn, self.scale)
    report(f"prior over the {self.dim}-d image embeddings of {self.clip.workdir} "
           f"(step {self.clip.step}), scaled by {self.scale:.4g}")
    return self.config

  def device_batch(self, host_batch: dict, step: int, mesh) -> dict:
    """Images (embedded in the step) and their captions' scaled text embeddings."""
    del step
    if "caption" not in host_batch:
      raise ValueError(f"config.task='prior' trains on captions, but config.data.dataset="
                       f"{self.config.data.dataset!r} has no 'caption' feature")
    text = self.clip.embed_texts(host_batch["caption"]) * self.scale
    return parallel.shard_batch({"x": host_batch["image"],
                                 "cond": {"embedding": text.astype(np.float32)}}, mesh)

  def sample_embeddings(self, params, prompts, rng: jax.Array, *,
                        guidance_scale: Optional[float] = None) -> np.ndarray:
    """Unit-norm image embeddings `f32[N, D]` sampled for `prompts` (one each)."""
    return sample_embeddings(self.config, self.model, self.schedule, self.clip, params, prompts,
                             rng, guidance_scale=guidance_scale)

  def write_samples(self, workdir: Workdir, step: int, params, mesh) -> Optional[str]:
    del workdir, step, params, mesh  # embeddings are judged by the evaluation, not pictures
    return None

  def evaluator(self, workdir: Workdir, mesh):
    """`evaluate(step, params) -> {"eval/prior_accuracy"}` (module docstring), or None when
    `config.eval.every` is 0."""
    del workdir, mesh
    if not self.config.eval.every:
      return None
    from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    p = self.config.prior
    heldout = data.load_eval_images(self.config, None, split=p.eval_split)
    means = class_means(self.clip.embed_images(heldout["image"]), heldout["label"])
    prompts = list(p.prompts) * p.eval_samples_per_prompt
    want = np.arange(len(prompts)) % len(p.prompts)
    rng = jax.random.fold_in(jax.random.key(self.config.seed), 3)

    def evaluate(step, params):
      del step
      drawn = self.sample_embeddings(jax.device_get(params), prompts, rng)
      return {"eval/prior_accuracy": float(np.mean(nearest(drawn, means) == want))}

    return evaluate


def _embed_images(apply_fn, scale, frozen, batch, rng):
  """The step's preprocess: images -> their scaled embeddings under the frozen tower."""
  del rng
  return dict(batch, x=apply_fn(frozen, batch["x"]) * scale)


def class_means(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The unit-norm mean embedding of each class, `[K, D]` (K = max label + 1)."""
  means = np.stack([emb[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
  return means / np.linalg.norm(means, axis=1, keepdims=True)


def nearest(emb: np.ndarray, means: np.ndarray) -> np.ndarray:
  """The index of each embedding's nearest (cosine) row of `means`, `i32[N]`."""
  return np.argmax(emb @ means.T, axis=1)


def sample_embeddings(config, net, noise_schedule, clip, params, prompts, rng, *,
                      guidance_scale: Optional[float] = None, batch_size: int = 0) -> np.ndarray:
  """Draws one image embedding per prompt from the prior `net` (params on the host).

  Args:
    config: the prior's config (`config.sample`: sampler, steps, guidance).
    net, noise_schedule: the prior's network and schedule.
    clip: the contrastive run (`embeddings.Contrastive`) whose text tower embeds the prompts.
    params: the prior's (EMA) params.
    prompts: N texts.
    rng: the key; embedding i depends on it and i alone (`ids`).
    guidance_scale: default `config.sample.guidance_scale`.
    batch_size: per sampler call; 0: all N in one.

  Returns:
    `f32[N, D]`, unit norm.
  """
  w = config.sample.guidance_scale if guidance_scale is None else guidance_scale
  if w != config.sample.guidance_scale:  # guided or not is the sampler's program: rebuild it
    if w != 1 and not config.train.cond_dropout > 0:
      raise ValueError(f"guidance scale {w} needs a prior trained with config.train."
                       f"cond_dropout > 0; this one was trained without: use 1")
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.sample.guidance_scale = float(w)
  text = clip.embed_texts(prompts) * embedding_scale(clip.embedding_dim)
  n = len(text)
  size = batch_size or n
  sampler = build.sampler(config, net, noise_schedule, batch_size=size)
  knobs = {"guidance_scale": w} if build.guided(config) else {}
  out = []
  for start in range(0, n, size):
    ids = np.arange(start, start + size)
    chunk = text[np.minimum(ids, n - 1)]
    out.append(np.asarray(sampler(params, rng, num_steps=config.sample.num_steps,
                                  cond={"embedding": chunk}, ids=ids, **knobs)))
  drawn = np.concatenate(out)[:n]
  return drawn / np.maximum(np.linalg.norm(drawn, axis=1, keepdims=True), 1e-6)
