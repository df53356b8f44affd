"""Writes tests/data/unet2d_before_nd.npz: two 2-D U-Nets' parameters, inputs and outputs as the
2-D-only U-Net computed them (commit 1db87a0, before the U-Net became dimension-generic).

tests/test_unet_nd.py loads the file as a checkpoint of that model: the parameter tree must
still fit the network built today, and the outputs must be the same. Rerunning this script
on today's code rewrites the file from today's network, which would make that test vacuous:
run it only to document how the file was made.

  python tests/data/make_unet2d_fixture.py
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffax import models

# Two networks that between them use every 2-D layer: attention at two levels and in the
# middle, scale-shift and additive time injection, a label embedding, skip projections,
# down- and upsampling.
CASES = {
    "cond": dict(sample_shape=(8, 8, 1), base_channels=8, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(8, 4), num_heads=2, dropout=0.0,
                 num_groups=4, num_classes=3, scale_shift=True),
    "uncond": dict(sample_shape=(16, 16, 3), base_channels=8, channel_mult=(1, 2, 2),
                   num_res_blocks=1, attention_resolutions=(8,), num_heads=1, dropout=0.0,
                   num_groups=4, num_classes=0, scale_shift=False),
}
PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet2d_before_nd.npz")


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else key
    out.update(flatten(value, name) if isinstance(value, dict) else {name: np.asarray(value)})
  return out


def main():
  arrays = {}
  rng = np.random.default_rng(0)
  for case, kw in CASES.items():
    model = models.create("unet", **kw)
    init = flatten(jax.jit(model.init_fn)(jax.random.key(0)))
    for name, value in init.items():  # the init as checksums: same seed, same parameters
      arrays[f"{case}/init_sum/{name}"] = np.float64(value.astype(np.float64).sum())
    params = {name: (value + 0.1 * rng.standard_normal(value.shape)).astype(np.float32)
              for name, value in init.items()}  # zero-initialised layers hide nothing
    x = rng.standard_normal((2, *kw["sample_shape"])).astype(np.float32)
    t = np.array([3, 777], np.int32)
    cond = {"label": np.array([0, 2], np.int32)} if kw["num_classes"] else None
    tree = {}
    for name, value in params.items():
      node = tree
      *parents, leaf = name.split("/")
      for p in parents:
        node = node.setdefault(p, {})
      node[leaf] = jnp.asarray(value)
    out = jax.jit(model.apply_fn)(tree, jnp.asarray(x), jnp.asarray(t), cond)
    arrays.update({f"{case}/params/{n}": v for n, v in params.items()})
    arrays.update({f"{case}/x": x, f"{case}/t": t, f"{case}/out": np.asarray(out)})
    if cond:
      arrays[f"{case}/label"] = cond["label"]
  np.savez_compressed(PATH, **arrays)
  print(f"wrote {PATH}: {os.path.getsize(PATH):,} bytes")


if __name__ == "__main__":
  main()
