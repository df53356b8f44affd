"""A network's weight map: each diffax parameter and the PyTorch weight(s) it comes from.

A converter lists every parameter of the diffax network once, as `(diffax path, torch keys,
kind)` rows (`Entries`), and the same list reads a torch state dict into a parameter tree
(`gather`) and writes one back (`scatter`), so the two directions cannot disagree. Kinds:

  conv      a convolution kernel, torch OIHW <-> HWIO
  dense     a linear weight, torch [out, in] <-> [in, out]
  shortcut  a 1x1 conv read as a dense kernel, torch [out, in, 1, 1] <-> [in, out]
  qkv       torch's q, k and v weights (or biases) <-> one kernel (bias) concatenated [q|k|v]
  vector    copied as is (biases, norm scales, embeddings)

diffusers' spatial `Attention` once named its weights query / key / value / proj_attn (DDPM's
and Stable Diffusion 1's VAE checkpoints still do); `gather` reads those names too, as
diffusers' own loader does, and `scatter` writes the current ones.
"""

from typing import Any, Mapping

import numpy as np

# diffusers' deprecated attention weight names, by the current ones.
_LEGACY_ATTENTION = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
                     ".to_out.0.": ".proj_attn."}


def _conv_in(w):  # torch OIHW -> HWIO
  return np.transpose(np.asarray(w, np.float32), (2, 3, 1, 0))


def _conv_out(w):  # HWIO -> torch OIHW
  return np.ascontiguousarray(np.transpose(np.asarray(w, np.float32), (3, 2, 0, 1)))


def _dense_in(w):  # torch [out, in] (or a 1x1 conv [out, in, 1, 1]) -> [in, out]
  w = np.asarray(w, np.float32)
  return w.reshape(w.shape[0], w.shape[1]).T


def levels(block_out_channels, what: str) -> dict:
  """diffusers' `block_out_channels` as diffax's `base_channels` and `channel_mult`.

  Raises:
    ValueError: a level's channels are not a multiple of the first level's.
  """
  channels = tuple(int(c) for c in block_out_channels)
  if any(c % channels[0] for c in channels):
    raise ValueError(f"{what} block_out_channels={channels} must be multiples of the first")
  return dict(base_channels=channels[0], channel_mult=tuple(c // channels[0] for c in channels))


class Entries(list):
  """A weight map under construction: `(diffax path, torch keys, kind)` rows, kind one of
  conv | dense | shortcut | vector | qkv (how a weight is laid out on each side)."""

  def conv(self, path, key):
    self.append((path + ("kernel",), (key + ".weight",), "conv"))
    self.append((path + ("bias",), (key + ".bias",), "vector"))

  def dense(self, path, key, kind="dense", bias=True):
    self.append((path + ("kernel",), (key + ".weight",), kind))
    if bias:
      self.append((path + ("bias",), (key + ".bias",), "vector"))

  def norm(self, path, key):
    self.append((path + ("scale",), (key + ".weight",), "vector"))
    self.append((path + ("bias",), (key + ".bias",), "vector"))

  def attention(self, name, key):
    """diffusers' `Attention` with a GroupNorm onto `layers.AttentionBlock` named `name` (or at
    the path `name`, a tuple)."""
    path = name if isinstance(name, tuple) else (name,)
    self.norm(path + ("norm",), key + ".group_norm")
    self.append((path + ("qkv", "kernel"), tuple(f"{key}.to_{n}.weight" for n in "qkv"), "qkv"))
    self.append((path + ("qkv", "bias"), tuple(f"{key}.to_{n}.bias" for n in "qkv"), "qkv"))
    self.dense(path + ("proj_out",), key + ".to_out.0")


def _find(state_dict: Mapping[str, Any], key: str) -> str:
  """`key`, or its deprecated attention name when only that is in the state dict."""
  if key in state_dict:
    return key
  for new, old in _LEGACY_ATTENTION.items():
    if new in key and key.replace(new, old) in state_dict:
      return key.replace(new, old)
  return key


def gather(state_dict: Mapping[str, Any], entries: Entries, *, what: str,
           exhaustive: bool = True) -> dict:
  """The diffax parameter tree of `entries` from a torch state dict.

  Raises:
    ValueError: a weight missing from the state dict or (with `exhaustive`) one left unused.
  """
  params, used = {}, set()
  for path, keys, kind in entries:
    keys = tuple(_find(state_dict, k) for k in keys)
    missing = [k for k in keys if k not in state_dict]
    if missing:
      raise ValueError(f"the {what} state dict has no {missing[0]!r}")
    used.update(keys)
    values = [state_dict[k] for k in keys]
    if kind == "conv":
      value = _conv_in(values[0])
    elif kind in ("dense", "shortcut"):
      value = _dense_in(values[0])
    elif kind == "qkv":
      value = np.concatenate([np.asarray(v, np.float32) if np.ndim(v) == 1 else _dense_in(v)
                              for v in values], axis=-1)
    else:
      value = np.array(values[0], np.float32)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  unused = sorted(set(state_dict) - used)
  if exhaustive and unused:
    raise ValueError(f"the {what} state dict has weights diffax does not use: {unused[:5]}"
                     + (" ..." if len(unused) > 5 else ""))
  return params


def scatter(params, entries: Entries) -> dict:
  """The torch state dict of `entries` from a diffax parameter tree (`gather`'s inverse)."""
  state_dict = {}
  for path, keys, kind in entries:
    value = params
    for name in path:
      value = value[name]
    value = np.asarray(value, np.float32)
    if kind == "conv":
      state_dict[keys[0]] = _conv_out(value)
    elif kind == "dense":
      state_dict[keys[0]] = np.ascontiguousarray(value.T)
    elif kind == "shortcut":
      state_dict[keys[0]] = np.ascontiguousarray(value.T[:, :, None, None])
    elif kind == "qkv":
      for key, part in zip(keys, np.split(value, 3, axis=-1)):
        state_dict[key] = np.ascontiguousarray(part.T if part.ndim == 2 else part)
    else:
      state_dict[keys[0]] = np.ascontiguousarray(value)
  return state_dict
