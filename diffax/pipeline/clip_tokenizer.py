"""CLIP's tokenizer as a `tokenizers.Tokenizer`, built from `vocab.json` + `merges.txt`.

Stable Diffusion's `tokenizer/` directory holds CLIP's byte-level BPE as the two files of the
original ("slow") tokenizer, with no `tokenizer.json`, the fast tokenizer's file that
`diffax.pipeline.text` reads. This builds the fast tokenizer transformers' `CLIPTokenizer`
builds from them (its `CLIPConverter`), so the token ids are the same:

  normalizer:     NFC, runs of whitespace -> one space, lowercase
  pre-tokenizer:  CLIP's split (contractions, letter runs, single digits, punctuation runs;
                  whitespace dropped), then byte-level (each byte a printable character)
  model:          BPE with the word-end suffix "</w>", no continuing-subword prefix
  post-processor: <|startoftext|> text <|endoftext|>

  tokenizer = clip_tokenizer.from_directory("sd/tokenizer")
  tokenizer.save("text_encoder/tokenizer.json")   # or write_tokenizer_json(...)

The special tokens (bos, eos, unk, pad) are special added tokens, as transformers registers
them; their names come from `special_tokens_map.json` or `tokenizer_config.json` when present.
The pad token is also the padding section's (`encode_batch` pads to the longest text; diffax's
`text.Tokenizer` reads the pad id from it and pads to a fixed length itself).
"""

import json
import os
from typing import Optional

VOCAB = "vocab.json"
MERGES = "merges.txt"
# transformers' CLIPTokenizer defaults; Stable Diffusion 2's pad token is "!".
SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
# CLIP's pre-tokenization regex (OpenAI's `simple_tokenizer.py`, transformers' CLIPTokenizer).
SPLIT = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
         r"""[^\s\p{L}\p{N}]+""")


def read_merges(path: str) -> list:
  """merges.txt -> `[(left, right), ...]` in rank order (the "#version" header skipped)."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  if lines and lines[0].startswith("#version"):
    lines = lines[1:]
  merges = []
  for number, line in enumerate(lines, 2):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f"{path} line {number}: a merge is two tokens separated by a space, got "
                       f"{line!r}")
    merges.append(tuple(parts))
  return merges


def build(vocab: dict, merges: list, *, special_tokens: Optional[dict] = None):
  """CLIP's fast tokenizer from its vocabulary and merges.

  Args:
    vocab: `{token: id}` (vocab.json).
    merges: `[(left, right), ...]` in rank order (`read_merges`).
    special_tokens: the names of `bos_token`, `eos_token`, `unk_token`, `pad_token`; missing
      ones take CLIP's (`SPECIAL_TOKENS`).

  Returns:
    A `tokenizers.Tokenizer`.

  Raises:
    ValueError: a special token missing from the vocabulary, named.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  from tokenizers import normalizers, pre_tokenizers  # pylint: disable=g-import-not-at-top
  special = {**SPECIAL_TOKENS, **(special_tokens or {})}
  for role, token in special.items():
    if token not in vocab:
      raise ValueError(f"the CLIP vocabulary has no {role} {token!r}")
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(
      vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
      end_of_word_suffix="</w>", fuse_unk=False, unk_token=special["unk_token"]))
  tokenizer.normalizer = normalizers.Sequence([
      normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
      normalizers.Lowercase()])
  tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(SPLIT), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True) for t in dict.fromkeys(
      special[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token"))])
  bos, eos, pad = special["bos_token"], special["eos_token"], special["pad_token"]
  tokenizer.post_processor = tokenizers.processors.RobertaProcessing(
      (eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False, add_prefix_space=False)
  # Names the pad token in tokenizer.json (Stable Diffusion pads with it: `text.Tokenizer`).
  tokenizer.enable_padding(pad_id=vocab[pad], pad_token=pad)
  return tokenizer


def _special_tokens(directory: str) -> dict:
  """The special tokens' names of a tokenizer directory's JSON files (none: CLIP's)."""
  names = {}
  for file in ("tokenizer_config.json", "special_tokens_map.json"):  # the second wins
    path = os.path.join(directory, file)
    if not os.path.exists(path):
      continue
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
    for role in SPECIAL_TOKENS:
      value = config.get(role)
      value = value.get("content") if isinstance(value, dict) else value
      if isinstance(value, str):
        names[role] = value
  return names


def from_directory(directory: str):
  """The tokenizer of a CLIP tokenizer directory (vocab.json + merges.txt).

  Raises:
    FileNotFoundError: either file is missing.
  """
  paths = [os.path.join(directory, name) for name in (VOCAB, MERGES)]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"CLIP tokenizer directory {directory} has no "
                            f"{os.path.basename(missing[0])} (it needs {VOCAB} and {MERGES})")
  with open(paths[0], encoding="utf-8") as f:
    vocab = json.load(f)
  return build(vocab, read_merges(paths[1]), special_tokens=_special_tokens(directory))


def with_padding(path: str, directory: str):
  """The fast tokenizer of a tokenizer.json file whose padding section names the pad token of
  `directory`'s JSON files (CLIP's when they name none), as `build` does.

  Raises:
    ValueError: the pad token is not in the tokenizer's vocabulary.
  """
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer.from_file(path)
  pad = {**SPECIAL_TOKENS, **_special_tokens(directory)}["pad_token"]
  pad_id = tokenizer.token_to_id(pad)
  if pad_id is None:
    raise ValueError(f"{path} has no pad token {pad!r}")
  tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
  return tokenizer


def write_tokenizer_json(directory: str, path: Optional[str] = None) -> str:
  """Writes the tokenizer of `directory` (vocab.json + merges.txt) as a tokenizer.json file.

  Args:
    directory: the CLIP tokenizer directory.
    path: the file to write; default `directory/tokenizer.json`.

  Returns:
    The path written.
  """
  path = path or os.path.join(directory, "tokenizer.json")
  from_directory(directory).save(path)
  return path
