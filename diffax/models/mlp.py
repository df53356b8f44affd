"""A residual MLP denoiser for vectors: the diffusion prior of unCLIP.

DALL-E 2's prior (Ramesh et al. 2022, 2.2) is a diffusion model over CLIP image embeddings
`x [B, D]`, conditioned on the caption's text embedding; the paper's denoiser is a decoder-only
transformer, this is the MLP the issue allows, small enough for a CPU:

  x_t [B, D] -> Dense(hidden) = h
  emb = MLP(timestep_embedding(t)) + Dense(cond["embedding"])     (the text embedding, [B, E])
  num_layers x: h = h + Dense(SiLU(Dense(4 hidden, LayerNorm(h) * (1 + scale) + shift)))
                with (scale, shift) = Dense(SiLU(emb))                    (ADM's scale-shift)
  Dense(D, zero-initialized)(SiLU(LayerNorm(h))) -> the prediction [B, D]

  model = diffax.models.create("mlp", sample_shape=(384,), hidden_dim=256, num_layers=4,
                               embedding_dim=384)
  model.null_cond            # {"embedding": zeros[384]}: the dropped text of guidance

The sample shape is `(D,)`: losses, samplers, EMA and checkpoints see `[B, D]` arrays as they
see `[B, H, W, C]` ones.
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffax.models import layers


class MLPDenoiser(nn.Module):
  """See the module docstring.

  Attributes:
    hidden_dim: width of the residual stream.
    num_layers: residual blocks.
    embedding_dim: 0 (unconditional) or E: reads `cond["embedding"]` `f32[B, E]`; absent, the
      null condition (zeros).
    dropout: dropout inside the blocks when training.
    dtype: compute dtype; parameters and the output are float32.
  """
  hidden_dim: int = 256
  num_layers: int = 4
  embedding_dim: int = 0
  dropout: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @property
  def cond_keys(self) -> tuple:
    return ("embedding",) if self.embedding_dim else ()

  def init_cond(self, sample_shape) -> dict | None:
    del sample_shape
    if not self.embedding_dim:
      return None
    return {"embedding": jnp.zeros((1, self.embedding_dim), jnp.float32)}

  @nn.compact
  def __call__(self, x, t, cond=None, *, train: bool = False):
    batch, dim = x.shape
    dt, width = self.dtype, self.hidden_dim
    t = jnp.broadcast_to(jnp.asarray(t), (batch,))
    emb = layers.timestep_embedding(t, width).astype(dt)  # [B, width]
    emb = nn.Dense(width, dtype=dt, name="temb_dense0")(emb)
    emb = nn.Dense(width, dtype=dt, name="temb_dense1")(nn.silu(emb))
    if self.embedding_dim:
      c = (cond or {}).get("embedding")
      c = jnp.zeros((batch, self.embedding_dim), dt) if c is None else c
      if c.ndim != 2 or c.shape[-1] != self.embedding_dim:
        raise ValueError(f"cond['embedding'] must be [B, {self.embedding_dim}] (the model's "
                         f"embedding_dim), got shape {tuple(c.shape)}")
      emb = emb + nn.Dense(width, dtype=dt, name="cond_embed")(
          jnp.broadcast_to(c, (batch, self.embedding_dim)).astype(dt))
    h = nn.Dense(width, dtype=dt, name="dense_in")(x.astype(dt))
    for i in range(self.num_layers):
      scale, shift = jnp.split(nn.Dense(2 * width, dtype=dt, name=f"block_{i}_emb")(
          nn.silu(emb)), 2, axis=-1)
      y = nn.LayerNorm(dtype=dt, name=f"block_{i}_norm")(h) * (1 + scale) + shift
      y = nn.silu(nn.Dense(4 * width, dtype=dt, name=f"block_{i}_dense0")(y))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
      h = h + nn.Dense(width, dtype=dt, name=f"block_{i}_dense1")(y)
    h = nn.silu(nn.LayerNorm(dtype=dt, name="norm_out")(h))
    out = nn.Dense(dim, dtype=dt, kernel_init=nn.initializers.zeros, name="dense_out")(h)
    return out.astype(jnp.float32)


def build(sample_shape, dtype, fast, *, hidden_dim=256, num_layers=4, embedding_dim=0,
          dropout=0.0):
  """The `MLPDenoiser` for vectors of `sample_shape` `(D,)` and its null condition
  (`diffax.models.create`): `{"embedding": zeros[E]}` when conditioned, else `{}`."""
  del fast  # plain Flax layers: no hand-written gradients to choose
  sample_shape = tuple(sample_shape)
  if len(sample_shape) != 1:
    raise ValueError(f"the MLP denoiser takes vectors, sample_shape (D,); got {sample_shape}")
  for name, value, low in (("hidden_dim", hidden_dim, 1), ("num_layers", num_layers, 1),
                           ("embedding_dim", embedding_dim, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
  module = MLPDenoiser(hidden_dim=int(hidden_dim), num_layers=int(num_layers),
                       embedding_dim=int(embedding_dim), dropout=float(dropout), dtype=dtype)
  null_cond = ({"embedding": np.zeros((int(embedding_dim),), np.float32)} if embedding_dim
               else {})
  return module, null_cond
