"""Hugging Face transformers text encoders onto diffax's (`diffax.models.text_encoder`).

  encoder, params = diffax.interop.text_encoder_from_transformers(config, state_dict)
  out = encoder.apply_fn(params, token_ids, mask)   # equals the model's last_hidden_state

`config` is the checkpoint's config.json as a dict, `state_dict` `{name: numpy array}` (what
`safetensors.numpy.load_file` reads, no torch needed). Its `model_type` picks the converter
(`ARCHITECTURES`): "bert" for every BERT-family checkpoint (BERT, MiniLM, all-MiniLM-L6-v2, bge,
e5, ...); "clip_text_model" for CLIPTextModel (Stable Diffusion's `text_encoder/`) and "clip"
for a whole CLIPModel, whose text tower (`text_config`, the `text_model.` weights) is read and
whose vision tower is ignored. A T5 encoder would be a further entry.
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


class _Reader:
  """Reads a transformers state dict's weights as diffax parameters, naming what is missing.

  Linear weights `[out, in]` become kernels `[in, out]`; `used` collects the names read.
  """

  def __init__(self, state_dict: Mapping[str, Any], model: str):
    self.state_dict, self.model, self.used = state_dict, model, set()

  def get(self, name: str) -> np.ndarray:
    if name not in self.state_dict:
      raise ValueError(f"the checkpoint has no weight {name!r} (is it a {self.model} model?)")
    self.used.add(name)
    return np.asarray(self.state_dict[name], np.float32)

  def dense(self, prefix: str) -> dict:
    return {"kernel": self.get(prefix + ".weight").T, "bias": self.get(prefix + ".bias")}

  def norm(self, prefix: str) -> dict:
    return {"scale": self.get(prefix + ".weight"), "bias": self.get(prefix + ".bias")}

  def embed(self, prefix: str) -> dict:
    return {"embedding": self.get(prefix + ".weight")}


def bert_params(state_dict: Mapping[str, Any], num_layers: int) -> dict:
  """transformers BertModel weights -> the parameters of `bert.BertEncoder`.

  Names may carry the `bert.` prefix of task models (BertForMaskedLM, ...); the pooler, heads
  and buffers are not used. Linear weights `[out, in]` become kernels `[in, out]`.

  Raises:
    ValueError: naming a weight the checkpoint lacks.
  """
  sd = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state_dict.items()}
  r = _Reader(sd, "BERT")

  def norm(prefix):  # old checkpoints name LayerNorm's parameters gamma / beta
    if prefix + ".gamma" in sd:
      return {"scale": r.get(prefix + ".gamma"), "bias": r.get(prefix + ".beta")}
    return r.norm(prefix)

  params = {"word_embeddings": r.embed("embeddings.word_embeddings"),
            "position_embeddings": r.embed("embeddings.position_embeddings"),
            "token_type_embeddings": r.embed("embeddings.token_type_embeddings"),
            "embeddings_norm": norm("embeddings.LayerNorm")}
  for i in range(num_layers):
    p = f"encoder.layer.{i}"
    params[f"layer_{i}"] = {
        "attention": {n: r.dense(f"{p}.attention.self.{n}") for n in ("query", "key", "value")},
        "attention_out": r.dense(f"{p}.attention.output.dense"),
        "attention_norm": norm(f"{p}.attention.output.LayerNorm"),
        "intermediate": r.dense(f"{p}.intermediate.dense"),
        "output": r.dense(f"{p}.output.dense"),
        "output_norm": norm(f"{p}.output.LayerNorm"),
    }
  return params


# CLIPTextConfig's defaults, for a CLIPModel config.json whose text_config leaves some out.
_CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                           num_hidden_layers=12, num_attention_heads=8,
                           max_position_embeddings=77, hidden_act="quick_gelu",
                           layer_norm_eps=1e-5, eos_token_id=49407)


def clip_arch(config: Mapping[str, Any]) -> dict:
  """The `text_encoder.create("clip", ...)` keywords of a transformers CLIPTextConfig dict (a
  CLIPConfig's `text_config`)."""
  c = {**_CLIP_TEXT_DEFAULTS, **config}
  return dict(vocab_size=int(c["vocab_size"]), hidden_size=int(c["hidden_size"]),
              num_layers=int(c["num_hidden_layers"]),
              num_heads=int(c["num_attention_heads"]),
              intermediate_size=int(c["intermediate_size"]),
              max_positions=int(c["max_position_embeddings"]),
              layer_norm_eps=float(c["layer_norm_eps"]), activation=str(c["hidden_act"]),
              eos_token_id=c["eos_token_id"])


def clip_params(state_dict: Mapping[str, Any], num_layers: int) -> dict:
  """transformers CLIPTextModel weights -> the parameters of `clip_text.ClipTextEncoder`.

  Names may carry the `text_model.` prefix (checkpoints written before transformers 5, and a
  whole CLIPModel, whose other weights are ignored); the `position_ids` buffer is not used.

  Raises:
    ValueError: naming a weight the checkpoint lacks, or text-tower weights it does not use
      (e.g. more layers than num_hidden_layers).
  """
  prefix = "text_model."
  if any(k.startswith(prefix) for k in state_dict):
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  r = _Reader(state_dict, "CLIP text")
  params = {"token_embedding": r.embed("embeddings.token_embedding"),
            "position_embedding": r.embed("embeddings.position_embedding"),
            "final_layer_norm": r.norm("final_layer_norm")}
  for i in range(num_layers):
    p = f"encoder.layers.{i}"
    params[f"layer_{i}"] = {
        "attention": {"query": r.dense(f"{p}.self_attn.q_proj"),
                      "key": r.dense(f"{p}.self_attn.k_proj"),
                      "value": r.dense(f"{p}.self_attn.v_proj")},
        "out_proj": r.dense(f"{p}.self_attn.out_proj"),
        "layer_norm1": r.norm(f"{p}.layer_norm1"), "layer_norm2": r.norm(f"{p}.layer_norm2"),
        "fc1": r.dense(f"{p}.mlp.fc1"), "fc2": r.dense(f"{p}.mlp.fc2"),
    }
  tower = ("embeddings.", "encoder.", "final_layer_norm.")
  unused = sorted(k for k in state_dict if k.startswith(tower) and k not in r.used
                  and k != "embeddings.position_ids")
  if unused:
    raise ValueError(f"the checkpoint has text-tower weights diffax's CLIP does not use: "
                     f"{unused[:5]}" + (" ..." if len(unused) > 5 else ""))
  return params


def _check_vocab(embedding, arch):
  """Raises ValueError when the token embedding table does not have the config's shape."""
  if embedding.shape != (arch["vocab_size"], arch["hidden_size"]):
    raise ValueError(f"the token embeddings are {embedding.shape}, but the config says "
                     f"vocab_size={arch['vocab_size']} and hidden_size={arch['hidden_size']}")


def _bert(config, state_dict, pooling):
  arch = bert_arch(config, pooling)
  encoder = text_encoder.create("bert", **arch)
  params = bert_params(state_dict, arch["num_layers"])
  _check_vocab(params["word_embeddings"]["embedding"], arch)
  return encoder, params


def _clip(config, state_dict, pooling):
  del pooling  # CLIP's sentence embedding is its end-of-text state (pooler_output)
  arch = clip_arch(config)
  encoder = text_encoder.create("clip", **arch)
  params = clip_params(state_dict, arch["num_layers"])
  _check_vocab(params["token_embedding"]["embedding"], arch)
  return encoder, params


def _clip_model(config, state_dict, pooling):
  if "text_config" not in config:
    raise ValueError("the CLIP config has no text_config (the text tower's settings)")
  return _clip(config["text_config"], state_dict, pooling)


# config.json's model_type -> converter(config, state_dict, pooling) -> (TextEncoder, params).
ARCHITECTURES = {"bert": _bert, "clip_text_model": _clip, "clip": _clip_model}


def text_encoder_from_transformers(config: Mapping[str, Any], state_dict: Mapping[str, Any],
                                   *, pooling: str = "mean"
                                   ) -> tuple[text_encoder.TextEncoder, dict]:
  """A transformers text encoder as a diffax `TextEncoder` and its parameters.

  Args:
    config: the checkpoint's config.json as a dict; its `model_type` picks the architecture.
    state_dict: `{name: numpy array}` of the checkpoint.
    pooling: BERT's sentence embedding, "mean" (sentence-transformers) or "cls"; CLIP's is
      always its end-of-text state (transformers' pooler_output).

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
