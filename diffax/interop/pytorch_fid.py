"""pytorch-fid's FID Inception weights onto `diffax.evaluation.inception`.

pytorch-fid's weights file, `pt_inception-2015-12-05-6726825d.pth` (the TensorFlow FID graph
ported to PyTorch), is the state dict of torchvision's `Inception3` with the FID blocks:
`Conv2d_1a_3x3.conv.weight`, `Conv2d_1a_3x3.bn.running_mean`, `Mixed_5b.branch1x1.conv.weight`,
..., `fc.weight`. The state dict of pytorch-fid's `InceptionV3` wrapper (`blocks.0.0.conv.weight`,
...) is accepted too. The classifier (`fc`) and `num_batches_tracked` are not needed.
"""

import re
from typing import Mapping

import jax
import numpy as np

from diffax.evaluation import inception

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               + WEIGHTS_FILE)

FID_CLASSES = 1008  # the 2015 TensorFlow graph's classifier; torchvision's ImageNet one has 1000
# pytorch-fid's InceptionV3 keeps the layers in `blocks`: block index, position -> layer name.
_WRAPPER_NAMES = {
    "0.0": "Conv2d_1a_3x3", "0.1": "Conv2d_2a_3x3", "0.2": "Conv2d_2b_3x3",
    "1.0": "Conv2d_3b_1x1", "1.1": "Conv2d_4a_3x3",
    "2.0": "Mixed_5b", "2.1": "Mixed_5c", "2.2": "Mixed_5d", "2.3": "Mixed_6a",
    "2.4": "Mixed_6b", "2.5": "Mixed_6c", "2.6": "Mixed_6d", "2.7": "Mixed_6e",
    "3.0": "Mixed_7a", "3.1": "Mixed_7b", "3.2": "Mixed_7c",
}
# torch name of each diffax leaf: (collection, leaf) -> suffix after ".conv." / ".bn."
_LEAVES = {("params", "kernel"): "conv.weight", ("params", "scale"): "bn.weight",
           ("params", "bias"): "bn.bias", ("batch_stats", "mean"): "bn.running_mean",
           ("batch_stats", "var"): "bn.running_var"}
_IGNORED = re.compile(r"(^fc\.|num_batches_tracked$|^AuxLogits\.)")


def _canonical(name: str) -> str:
  """A torch key with pytorch-fid's `blocks.i.j.` prefix renamed to the layer's own name."""
  match = re.match(r"blocks\.(\d+\.\d+)\.(.*)", name)
  if match and match.group(1) in _WRAPPER_NAMES:
    return f"{_WRAPPER_NAMES[match.group(1)]}.{match.group(2)}"
  return name


def _torch_name(path: tuple) -> tuple[str, str]:
  """(collection, "Mixed_5b", "branch1x1", "conv", "kernel") -> the torch key."""
  collection, *modules, leaf = path
  modules = [m for m in modules if m not in ("conv", "bn")]
  return collection, ".".join(modules) + "." + _LEAVES[(collection, leaf)]


def inception_from_torch(state_dict: Mapping[str, np.ndarray]) -> dict:
  """The variables of `diffax.evaluation.inception_pool3` from pytorch-fid's state dict.

  Args:
    state_dict: `{name: array}`, e.g. `{k: v.numpy() for k, v in torch.load(WEIGHTS_FILE)
      .items()}` (pytorch-fid's weights file), or the state dict of pytorch-fid's InceptionV3.

  Returns:
    `{"params": ..., "batch_stats": ...}`, float32 numpy arrays (convolution kernels
    transposed from OIHW to HWIO).

  Raises:
    ValueError: a key the network needs is missing or has the wrong shape; the message names
      the first such keys and where the right file comes from.
  """
  given = {}
  fc = state_dict.get("fc.weight")
  if fc is not None and np.shape(fc)[0] != FID_CLASSES:
    raise ValueError(f"these Inception weights have {np.shape(fc)[0]} classes (torchvision's "
                     f"ImageNet InceptionV3?), not the FID network's {FID_CLASSES}: FID needs "
                     f"pytorch-fid's {WEIGHTS_FILE} from {WEIGHTS_URL}")
  for name, value in state_dict.items():
    name = _canonical(str(name))
    if not _IGNORED.search(name):
      given[name] = np.asarray(value)
  shapes = inception.variable_shapes()
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  where = (f"expected pytorch-fid's FID Inception state dict ({WEIGHTS_FILE}, from "
           f"{WEIGHTS_URL})")
  missing, wrong, out = [], [], {}
  for key_path, leaf in flat:
    path = tuple(k.key for k in key_path)
    collection, torch_key = _torch_name(path)
    if torch_key not in given:
      missing.append(torch_key)
      continue
    value = given.pop(torch_key)
    if path[-1] == "kernel":
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value  # OIHW -> HWIO
    if value.shape != leaf.shape:
      wrong.append(f"{torch_key} has shape {_torch_shape(value, path)}, the network needs "
                   f"{_torch_shape(np.empty(leaf.shape), path)}")
      continue
    node = out.setdefault(collection, {})
    for module in path[1:-1]:
      node = node.setdefault(module, {})
    node[path[-1]] = value.astype(np.float32)
  if wrong:
    raise ValueError(f"Inception weights of the wrong shape: {'; '.join(wrong[:3])}"
                     + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
                     + f"; {where}")
  if missing:
    raise ValueError(f"Inception weights lack {len(missing)} of the network's "
                     f"{len(flat)} arrays (e.g. {', '.join(missing[:3])}); {where}")
  if given:
    raise ValueError(f"Inception weights hold {len(given)} array(s) the network does not "
                     f"have (e.g. {', '.join(sorted(given)[:3])}); {where}")
  return out


def _torch_shape(value: np.ndarray, path: tuple) -> tuple:
  """A shape as the torch file states it (kernels OIHW)."""
  if path[-1] == "kernel" and value.ndim == 4:
    return tuple(np.shape(value.transpose(3, 2, 0, 1)))
  return tuple(value.shape)
