"""diffax's CLIP text encoder and tokenizer against transformers' CLIPTextModel and
CLIPTokenizer (Stable Diffusion's text encoder), with the same random weights.

Parity: per-token states (last_hidden_state) and the pooled end-of-text state (pooler_output)
agree to float32 rounding for quick_gelu with the legacy `eos_token_id == 2` (SD 1.x) and gelu
with a real end-of-text id (SD 2.x), on a padded batch both with an attention mask (as
transformers with `attention_mask`) and without (Stable Diffusion's call: every position).
The tokenizer built from vocab.json + merges.txt gives transformers' ids. A directory written by
transformers' save_pretrained loads through `diffax.pipeline.text.load`. Every weight is random;
a tiny vocabulary is written per test run. Runs in CI: torch and transformers are in the test
extra.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from tokenizers import pre_tokenizers

from diffax import interop
from diffax.pipeline import clip_tokenizer
from diffax.pipeline import text

WORDS = ("hello", "world", "a", "photo", "of", "cat", "caf\u00e9", "don", "'t", "7")
TEXTS = ["a photo of a cat", "Hello, WORLD!", "  hello\n\tworld  ", "Caf\u00e9 CAFE\u0301",
         "don't 3.14", "hello<|endoftext|>world", "\u65e5\u672c \U0001F600", ""]
LENGTH = 12  # tokens per padded text in the parity tests


def write_vocab(directory, words=WORDS) -> dict:
  """A tiny CLIP vocabulary: the 256 byte characters, each with "</w>", the merges that spell
  `words` left to right, and the two special tokens last (as in CLIP's)."""
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  tokens, merges = alphabet + [c + "</w>" for c in alphabet], []
  for word in words:
    chars = list(pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(word)[0][0])
    chars[-1] += "</w>"
    left = chars[0]
    for c in chars[1:]:
      if (left, c) not in merges:
        merges.append((left, c))
        tokens.append(left + c)
      left += c
  vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens + ["<|startoftext|>",
                                                              "<|endoftext|>"]))}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f)
  with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  return vocab


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("clip_vocab"))
  write_vocab(directory)
  return directory


def random_clip(vocab_size, eos_token_id, hidden_act, seed=0):
  """A 2-layer, 4-head, 32-wide CLIPTextModel whose every weight is random."""
  torch.manual_seed(seed)
  config = transformers.CLIPTextConfig(
      vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
      layer_norm_eps=1e-5, bos_token_id=vocab_size - 2, eos_token_id=eos_token_id,
      pad_token_id=vocab_size - 1)
  model = transformers.CLIPTextModel(config).eval()
  with torch.no_grad():  # large enough that the MLP's inputs reach |x| ~ 3, where the GELUs
    for name, p in model.named_parameters():  # differ
      if "layer_norm" in name:
        p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else
                0.3 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / np.sqrt(p.shape[-1]) if p.ndim == 2 else
                0.3 * torch.randn_like(p))
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


# (hidden_act, eos_token_id): SD 1.x's text encoder (the legacy eos id 2: pooled at the largest
# id) and SD 2.x's (gelu; pooled at the first end-of-text id).
VARIANTS = {"sd1": ("quick_gelu", 2), "sd2": ("gelu", None)}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def converted(request, vocab_dir):
  """(transformers model, diffax encoder, params, jitted apply_fn, ids [B, L], mask [B, L])."""
  tokenizer = clip_tokenizer.from_directory(vocab_dir)
  vocab_size = tokenizer.get_vocab_size()
  act, eos = VARIANTS[request.param]
  model, state_dict = random_clip(vocab_size, vocab_size - 1 if eos is None else eos, act)
  config = model.config.to_dict()
  encoder, params = interop.text_encoder_from_transformers(config, state_dict)
  ids = np.full((len(TEXTS), LENGTH), vocab_size - 1, np.int32)  # padded with end-of-text
  mask = np.zeros((len(TEXTS), LENGTH), bool)
  for i, encoding in enumerate(tokenizer.encode_batch(TEXTS)):
    n = min(sum(encoding.attention_mask), LENGTH)
    ids[i, :n], mask[i, :n] = encoding.ids[:n], True
  assert mask.sum(1).max() == LENGTH and mask.sum(1).min() == 2  # one truncated, one empty
  return model, encoder, params, jax.jit(encoder.apply_fn), ids, mask


def relative_error(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def test_masked_batch_equals_transformers(converted):
  model, _, params, apply_fn, ids, mask = converted
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids).long(),
                 attention_mask=torch.from_numpy(mask).long())
  out = apply_fn(params, jnp.asarray(ids), jnp.asarray(mask))
  hidden = want.last_hidden_state.numpy()
  assert relative_error(np.asarray(out.tokens)[mask], hidden[mask]) <= 1e-4
  assert not np.asarray(out.tokens)[~mask].any()  # zero at padding
  assert relative_error(out.pooled, want.pooler_output.numpy()) <= 1e-4
  np.testing.assert_array_equal(out.mask, mask)


def test_unmasked_batch_equals_transformers(converted):
  """Stable Diffusion's call: no attention mask, every position's state is context."""
  model, _, params, apply_fn, ids, _ = converted
  with torch.no_grad():
    want = model(input_ids=torch.from_numpy(ids).long())
  out = apply_fn(params, jnp.asarray(ids), jnp.ones(ids.shape, bool))
  error = relative_error(out.tokens, want.last_hidden_state.numpy())
  print("relative error", error)
  assert error <= 1e-4, error
  assert relative_error(out.pooled, want.pooler_output.numpy()) <= 1e-4


def test_prefixed_and_whole_clip_checkpoints_give_the_same_params(converted):
  """Stable Diffusion's text_encoder files name weights `text_model.*` (transformers < 5), and
  a whole CLIPModel holds the text tower beside a vision tower."""
  model, _, params, _, _, _ = converted
  text_config = model.config.to_dict()
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  prefixed = {f"text_model.{k}": v for k, v in state_dict.items()}
  prefixed["text_model.embeddings.position_ids"] = np.arange(16)[None]
  _, got = interop.text_encoder_from_transformers(text_config, prefixed)
  jax.tree.map(np.testing.assert_array_equal, got, params)
  whole = transformers.CLIPModel(transformers.CLIPConfig(
      text_config=text_config, vision_config=dict(hidden_size=8, intermediate_size=16,
                                                  num_hidden_layers=1, num_attention_heads=2,
                                                  image_size=8, patch_size=4)))
  whole.text_model.load_state_dict(model.state_dict())
  whole_state = {k: v.numpy() for k, v in whole.state_dict().items()}
  assert any(k.startswith("vision_model.") for k in whole_state)
  encoder, got = interop.text_encoder_from_transformers(whole.config.to_dict(), whole_state)
  jax.tree.map(np.testing.assert_array_equal, got, params)
  assert encoder.name == "clip" and (encoder.width, encoder.max_length) == (32, 16)


def test_tokenizer_ids_equal_transformers(vocab_dir, tmp_path):
  reference = transformers.CLIPTokenizer.from_pretrained(vocab_dir)
  ours = clip_tokenizer.from_directory(vocab_dir)
  path = clip_tokenizer.write_tokenizer_json(vocab_dir, str(tmp_path / "tokenizer.json"))
  saved = text.Tokenizer(path, max_length=64)
  ids, mask = saved(TEXTS)
  for i, sentence in enumerate(TEXTS):
    want = reference(sentence)["input_ids"]
    assert ours.encode(sentence).ids == want, sentence
    assert list(ids[i][mask[i]]) == want, sentence
  assert len(reference("hello world")["input_ids"]) == 4  # merges are used: one id per word
  # Stable Diffusion 2's tokenizer pads with "!", which transformers makes a special token.
  sd2 = tmp_path / "sd2"
  shutil.copytree(vocab_dir, sd2)
  with open(sd2 / "special_tokens_map.json", "w", encoding="utf-8") as f:
    json.dump({"pad_token": "!", "bos_token": {"content": "<|startoftext|>"}}, f)
  reference = transformers.CLIPTokenizer.from_pretrained(str(sd2))
  for sentence in ("hello! world!", "!!"):
    assert (clip_tokenizer.from_directory(str(sd2)).encode(sentence).ids
            == reference(sentence)["input_ids"])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, vocab_dir):
  """A random CLIPTextModel saved by transformers, with vocab.json + merges.txt beside it."""
  directory = str(tmp_path_factory.mktemp("clip_text"))
  vocab_size = len(json.load(open(os.path.join(vocab_dir, "vocab.json"), encoding="utf-8")))
  model, _ = random_clip(vocab_size, 2, "quick_gelu", seed=1)
  model.save_pretrained(directory, safe_serialization=True)
  for name in ("vocab.json", "merges.txt"):
    shutil.copy(os.path.join(vocab_dir, name), directory)
  return directory


def test_text_load_reads_a_clip_directory(clip_dir, tmp_path):
  model = transformers.CLIPTextModel.from_pretrained(clip_dir).eval()
  reference = transformers.CLIPTokenizer.from_pretrained(clip_dir)
  batch = reference(TEXTS, padding="max_length", truncation=True, max_length=LENGTH,
                    return_tensors="pt")
  with torch.no_grad():
    want = model(**batch)
  mask = batch["attention_mask"].numpy().astype(bool)
  encoder = text.load(clip_dir, max_length=LENGTH)  # vocab.json + merges.txt
  with_json = tmp_path / "with_json"
  shutil.copytree(clip_dir, with_json)
  clip_tokenizer.write_tokenizer_json(str(with_json))
  os.remove(with_json / "merges.txt")
  for loaded in (encoder, text.load(str(with_json), max_length=LENGTH)):
    out = loaded.encode(TEXTS)
    np.testing.assert_array_equal(out.mask, mask)
    np.testing.assert_array_equal(loaded.tokenizer(TEXTS)[0][mask],
                                  batch["input_ids"].numpy()[mask])
    assert relative_error(out.tokens[mask], want.last_hidden_state.numpy()[mask]) <= 1e-4
    assert relative_error(out.pooled, want.pooler_output.numpy()) <= 1e-4
  # Stable Diffusion's conditioning: padded with the pad token, every position attended.
  sd = text.load(str(with_json), max_length=LENGTH, attend_padding=True)
  ids, sd_mask = sd.tokenizer(TEXTS)
  np.testing.assert_array_equal(ids, batch["input_ids"].numpy())
  assert sd_mask.all()
  with torch.no_grad():
    want = model(input_ids=batch["input_ids"])
  out = sd.encode(TEXTS)
  assert relative_error(out.tokens, want.last_hidden_state.numpy()) <= 1e-4
  assert relative_error(out.pooled, want.pooler_output.numpy()) <= 1e-4
  os.remove(with_json / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match="no tokenizer.json, nor vocab.json and merges"):
    text.load(str(with_json), max_length=LENGTH)


def test_bad_checkpoints_are_named(converted):
  model, _, _, _, _, _ = converted
  config = model.config.to_dict()
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  with pytest.raises(ValueError, match="CLIP activation 'silu' is not supported"):
    interop.text_encoder_from_transformers(dict(config, hidden_act="silu"), state_dict)
  with pytest.raises(ValueError, match="does not use: .*encoder.layers.1.mlp.fc1.bias"):
    interop.text_encoder_from_transformers(dict(config, num_hidden_layers=1), state_dict)
  with pytest.raises(ValueError, match="no weight 'final_layer_norm.bias'"):
    interop.text_encoder_from_transformers(
        config, {k: v for k, v in state_dict.items() if k != "final_layer_norm.bias"})
  with pytest.raises(ValueError, match="CLIP config has no text_config"):
    interop.text_encoder_from_transformers({"model_type": "clip"}, state_dict)
