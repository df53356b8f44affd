"""Hugging Face transformers text encoders onto diffax's (`diffax.models.text_encoder`).

  encoder, params = diffax.interop.text_encoder_from_transformers(config, state_dict)
  out = encoder.apply_fn(params, token_ids, mask)   # equals BertModel's last_hidden_state

`config` is the checkpoint's config.json as a dict, `state_dict` `{name: numpy array}` (what
`safetensors.numpy.load_file` reads, no torch needed). Its `model_type` picks the converter
(`ARCHITECTURES`): "bert" today, for every BERT-family checkpoint (BERT, MiniLM,
all-MiniLM-L6-v2, bge, e5, ...); CLIP and T5 text towers would be further entries.
"""

from typing import Any, Mapping

import numpy as np

from diffax.models import text_encoder


def bert_arch(config: Mapping[str, Any], pooling: str = "mean") -> dict:
  """The `text_encoder.create("bert", ...)` keywords of a transformers BertConfig dict.

  Raises:
    ValueError: naming an option diffax's BERT does not implement.
  """
  kind = config.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise ValueError(f"BERT position_embedding_type={kind!r} is not supported (diffax's BERT "
                     f"has absolute position embeddings)")
  try:
    return dict(vocab_size=int(config["vocab_size"]), hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                max_positions=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                activation=str(config.get("hidden_act", "gelu")), pooling=pooling)
  except KeyError as e:
    raise ValueError(f"the BERT config has no {e.args[0]!r}") from None


def bert_params(state_dict: Mapping[str, Any], num_layers: int) -> dict:
  """transformers BertModel weights -> the parameters of `bert.BertEncoder`.

  Names may carry the `bert.` prefix of task models (BertForMaskedLM, ...); the pooler, heads
  and buffers are not used. Linear weights `[out, in]` become kernels `[in, out]`.

  Raises:
    ValueError: naming a weight the checkpoint lacks.
  """
  sd = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state_dict.items()}

  def get(name):
    if name not in sd:
      raise ValueError(f"the checkpoint has no weight {name!r} (is it a BERT model?)")
    return np.asarray(sd[name], np.float32)

  def dense(prefix):
    return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

  def norm(prefix):  # old checkpoints name LayerNorm's parameters gamma / beta
    if prefix + ".gamma" in sd:
      return {"scale": get(prefix + ".gamma"), "bias": get(prefix + ".beta")}
    return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

  embed = lambda name: {"embedding": get(f"embeddings.{name}.weight")}
  params = {"word_embeddings": embed("word_embeddings"),
            "position_embeddings": embed("position_embeddings"),
            "token_type_embeddings": embed("token_type_embeddings"),
            "embeddings_norm": norm("embeddings.LayerNorm")}
  for i in range(num_layers):
    p = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "attention": {n: dense(f"{p}.attention.self.{n}") for n in ("query", "key", "value")},
        "attention_out": dense(f"{p}.attention.output.dense"),
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": dense(f"{p}.intermediate.dense"),
        "output": dense(f"{p}.output.dense"),
        "output_norm": norm(f"{p}.output.LayerNorm"),
    }
  return params


def _bert(config, state_dict, pooling):
  arch = bert_arch(config, pooling)
  encoder = text_encoder.create("bert", **arch)
  params = bert_params(state_dict, arch["num_layers"])
  vocab = params["word_embeddings"]["embedding"].shape
  if vocab != (arch["vocab_size"], arch["hidden_size"]):
    raise ValueError(f"the word embeddings are {vocab}, but the config says vocab_size="
                     f"{arch['vocab_size']} and hidden_size={arch['hidden_size']}")
  return encoder, params


# config.json's model_type -> converter(config, state_dict, pooling) -> (TextEncoder, params).
ARCHITECTURES = {"bert": _bert}


def text_encoder_from_transformers(config: Mapping[str, Any], state_dict: Mapping[str, Any],
                                   *, pooling: str = "mean"
                                   ) -> tuple[text_encoder.TextEncoder, dict]:
  """A transformers text encoder as a diffax `TextEncoder` and its parameters.

  Args:
    config: the checkpoint's config.json as a dict; its `model_type` picks the architecture.
    state_dict: `{name: numpy array}` of the checkpoint.
    pooling: the sentence embedding, "mean" (sentence-transformers) or "cls".

  Returns:
    `(encoder, params)`; `encoder.apply_fn(params, token_ids, mask).tokens` equals the
    transformers model's `last_hidden_state` at the real tokens.

  Raises:
    ValueError: an unsupported model_type or option, or a missing weight, named.
  """
  kind = config.get("model_type")
  if kind not in ARCHITECTURES:
    raise ValueError(f"text encoders of model_type {kind!r} are not supported; diffax reads "
                     f"{sorted(ARCHITECTURES)} (config.json's model_type)")
  return ARCHITECTURES[kind](config, state_dict, pooling)
