"""From data and requests to the conditioning pytree a model reads (`diffax.conditioning`).

The keys come from the model (`Model.cond_keys`); their values from:

  key                  training (a data batch)            sampling (a request)
  label                the dataset's labels               --class_label (i % classes)
  context, _mask       its captions: every distinct one   the prompts, image i gets
                       of the split encoded once by the   prompts[i % len(prompts)]
                       frozen text encoder, then looked
                       up
  embedding            the image's embedding by the       image embeddings: a prior's
                       frozen contrastive image tower,    samples (prompts), or an image's
                       inside the train step              (variations)
                       (`embed_in_step`; unCLIP's decoder)
  low_res              the image area-downsampled to      the stage below's samples, or an
                       low_res_size rows                  image the user gives
  noise_level          drawn by the loss (Imagen's        a fixed level, the low-res input
                       augmentation, `diffax.losses`)     noised to it

The text encoder is loaded once per Conditioner (`text.load`); its width must be the model's
context_dim. Likewise an unCLIP decoder's contrastive run (`config.decoder.contrastive_workdir`,
`embeddings.load`): its embedding width must be the model's embedding_dim.
"""

from typing import Optional, Sequence

import jax
import numpy as np

from diffax import conditioning
from diffax.pipeline import text as text_lib


def downsample(images: np.ndarray, factor: int) -> np.ndarray:
  """Area downsampling by an integer factor: the mean of each factor x factor block.

  Args:
    images: `[N, H, W, C]`, H and W multiples of factor.

  Returns:
    `[N, H / factor, W / factor, C]`.
  """
  n, height, width, c = images.shape
  blocks = np.asarray(images, np.float32).reshape(n, height // factor, factor, width // factor,
                                                  factor, c)
  return blocks.mean(axis=(2, 4))


def class_labels(num_classes: int, num_images: int, class_label: int) -> np.ndarray:
  """`class_label` for every image, or i % num_classes for image i when it is -1."""
  if class_label >= 0:
    return np.full((num_images,), class_label, np.int32)
  return (np.arange(num_images) % num_classes).astype(np.int32)


class Conditioner:
  """Builds the cond of one model from data batches and from sampling requests.

  Attributes:
    keys: the keys the model reads.
    text: the frozen text encoder (`text.FrozenTextEncoder`) of a text model, else None.
    factor: a super-resolution model's upsampling factor (H / low_res_size), else None.
  """

  def __init__(self, config, net):
    self.config, self.keys = config, tuple(net.cond_keys)
    self.text, self._captions_encoded = None, False
    if "context" in self.keys:
      self.text = text_lib.from_config(config)
      if self.text.width != config.model.context_dim:
        raise ValueError(
            f"config.model.context_dim={config.model.context_dim} must equal the width "
            f"{self.text.width} of the text encoder's token embeddings (config.text.encoder="
            f"{config.text.encoder or 'the default, all-MiniLM-L6-v2'!r})")
    self.clip = None
    if "embedding" in self.keys:
      self.clip = load_contrastive(config)
    self.factor = None
    if "low_res" in self.keys:
      self.factor = net.sample_shape[0] // config.model.low_res_size
    self.low_res_shape = None
    if self.factor:
      h, w, c = net.sample_shape
      self.low_res_shape = (h // self.factor, w // self.factor, c)

  def training(self, host_batch: dict) -> Optional[dict]:
    """The cond of a data batch `{"image", "label"[, "caption"]}` (host numpy), or None."""
    cond = {}
    if "label" in self.keys:
      cond["label"] = host_batch["label"]
    if "context" in self.keys:
      if "caption" not in host_batch:
        raise ValueError(f"config.model.context_dim > 0 trains on captions, but "
                         f"config.data.dataset={self.config.data.dataset!r} has no 'caption' "
                         f"feature (use e.g. digits_text)")
      if not self._captions_encoded:  # every caption of the split, once, in a few calls
        from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
        self.text.encode(data.captions(self.config))
        self._captions_encoded = True
      cond.update(self.text.cond(list(host_batch["caption"])))
    # "embedding": computed inside the train step by the frozen image tower (`embed_in_step`).
    if "low_res" in self.keys:  # noised by the loss (config.train.low_res_noise)
      cond["low_res"] = downsample(host_batch["image"], self.factor)
    return cond or None

  def sampling(self, num_images: int, *, class_label: int = -1,
               prompts: Optional[Sequence[str]] = None, low_res=None,
               noise_level: float = 0.0, rng: Optional[jax.Array] = None,
               embedding=None) -> Optional[dict]:
    """The per-image cond of a request (`sample.Request.per_image["cond"]`), or None.

    Args:
      num_images: how many images.
      class_label: a class model's label for every image, -1 for i % num_classes.
      prompts: a text model's prompts; image i gets prompts[i % len(prompts)]; None or empty:
        the empty caption (unconditional).
      low_res: a super-resolution model's input, `[n, h, w, C]` in [-1, 1]; image i gets row
        i % n.
      noise_level: the augmentation level of low_res in [0, 1] (Imagen samples with a fixed
        level).
      rng: the key of the augmentation noise; image i's noise depends on it and i alone.
      embedding: an unCLIP decoder's image embeddings `[n, D]` (a prior's samples, or the
        embeddings of images to vary); image i gets row i % n.

    Returns:
      A dict of arrays whose rows cycle over the images, or None.

    Raises:
      ValueError: prompts for a model without text, a low-res input missing, of the wrong
        size or for a model that takes none, a bad noise level.
    """
    cond = {}
    if prompts and "context" not in self.keys:
      raise ValueError("prompts need a text-conditional model (config.model.context_dim > 0); "
                       "this model reads " + (", ".join(self.keys) or "no condition")
                       + (" (use --class_label)" if "label" in self.keys else ""))
    if "label" in self.keys:
      cond["label"] = class_labels(self.config.model.num_classes, num_images, class_label)
    if "context" in self.keys:
      cond.update(self.text.cond(list(prompts or [""])))
    if embedding is not None and "embedding" not in self.keys:
      raise ValueError("image embeddings need an unCLIP decoder (config.model.embedding_dim > "
                       "0); this model reads " + (", ".join(self.keys) or "no condition"))
    if "embedding" in self.keys:
      if embedding is None:
        raise ValueError("an unCLIP decoder needs image embeddings: prompts through its prior "
                         "(--workdir=PRIOR,DECODER --prompt=...) or an image to vary "
                         "(--variations_of=IMAGE)")
      embedding = np.asarray(embedding, np.float32)
      if embedding.ndim != 2 or embedding.shape[1] != self.config.model.embedding_dim:
        raise ValueError(f"image embeddings of shape {embedding.shape}; this decoder reads "
                         f"[N, {self.config.model.embedding_dim}] (config.model.embedding_dim)")
      cond["embedding"] = embedding[np.arange(num_images) % len(embedding)]
    if low_res is not None and "low_res" not in self.keys:
      raise ValueError("a low-res input needs a super-resolution model (config.model."
                       "low_res_size > 0); this one draws images from noise alone")
    if "low_res" in self.keys:
      if low_res is None:
        raise ValueError("a super-resolution model needs a low-res input (--low_res, or "
                         "sampling it as a later stage of a cascade)")
      cond.update(self.augmented_low_res(low_res, num_images, noise_level, rng))
    return cond or None

  def augmented_low_res(self, low_res, num_images: int, noise_level: float,
                        rng: Optional[jax.Array]) -> dict:
    """`{"low_res": [num_images, h, w, C], "noise_level": [num_images]}`: image i's input
    (row i % n) noised to noise_level with noise drawn from fold_in(rng, i)."""
    low_res = np.asarray(low_res, np.float32)
    low_res = low_res[None] if low_res.ndim == 3 else low_res
    if low_res.ndim != 4 or tuple(low_res.shape[1:]) != self.low_res_shape:
      raise ValueError(f"the low-res input has shape {low_res.shape}; this super-resolution "
                       f"model takes {'x'.join(map(str, self.low_res_shape[:2]))} images with "
                       f"{self.low_res_shape[2]} channel(s) ([N, "
                       f"{', '.join(map(str, self.low_res_shape))}])")
    if not 0.0 <= noise_level <= 1.0:
      raise ValueError(f"the noise level of the low-res input must lie in [0, 1], got "
                       f"{noise_level}")
    rows = low_res[np.arange(num_images) % len(low_res)]
    level = np.full((num_images,), noise_level, np.float32)
    if noise_level > 0:
      rng = jax.random.key(0) if rng is None else rng
      draw = lambda i: jax.random.normal(jax.random.fold_in(rng, i), self.low_res_shape)
      noise = np.asarray(jax.vmap(draw)(np.arange(num_images)))
      rows = np.asarray(conditioning.augment_low_res(rows, level, noise))
    return {"low_res": rows, "noise_level": level}


def load_contrastive(config):
  """The contrastive run (`embeddings.Contrastive`) of an unCLIP decoder
  (`config.decoder.contrastive_workdir`), checked against `config.model.embedding_dim`."""
  # Imported here: embeddings reads the contrastive task, whose package imports this module.
  from diffax.pipeline import embeddings  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  section = config.get("decoder")
  where = section.get("contrastive_workdir") if section is not None else None
  if not where:
    raise ValueError(f"config.model.embedding_dim={config.model.embedding_dim} conditions on "
                     f"image embeddings: set config.decoder.contrastive_workdir to the workdir "
                     f"of a trained contrastive stage (configs/digits_clip.py)")
  clip = embeddings.load(where)
  if clip.embedding_dim != config.model.embedding_dim:
    raise ValueError(f"config.model.embedding_dim={config.model.embedding_dim}, but the "
                     f"contrastive stage config.decoder.contrastive_workdir={where} embeds in "
                     f"{clip.embedding_dim} dimensions: set embedding_dim={clip.embedding_dim}")
  return clip


def embed_in_step(clip, frozen, preprocess):
  """The train step's `(frozen, preprocess)` for an unCLIP decoder: `cond["embedding"]` is the
  frozen image tower's embedding of each micro-batch's images `batch["x"]`, computed on the
  devices inside the step (each process feeds only its share of the batch), before `preprocess`
  (a latent model's encoding, whose frozen params are kept under "inner").

  Args:
    clip: the contrastive run (`embeddings.Contrastive`).
    frozen, preprocess: the step's others, or None.
  """
  apply = clip.tower.apply_fn

  def embed(params, batch, rng):
    cond = dict(batch.get("cond") or {}, embedding=apply(params["image_tower"], batch["x"]))
    batch = dict(batch, cond=cond)
    return batch if preprocess is None else preprocess(params["inner"], batch, rng)

  return {"image_tower": clip.params["image"], "inner": frozen}, embed
