"""The denoising training objective: a pure `loss_fn(params, batch, rng) -> (loss, aux)`.

For each example: t ~ Uniform{0..T-1}, eps ~ N(0, I), x_t = q_sample(x_0, t, eps); the model
predicts eps, x0 or v from (x_t, t) and is regressed onto that target with mean squared error
(DDPM's L_simple, Ho et al. 2020 eq. 14, for "eps"). Min-SNR-gamma weighting (Hang et al. 2023)
optionally reweights the timesteps. Nothing here assumes images: x is `[B, ...]` of any shape
(images, audio, video, embedding vectors).
"""

from typing import Any, Callable, Mapping, Optional

import chex
import jax
import jax.numpy as jnp

from diffax import conditioning
from diffax import diffusion
from diffax.schedules import Schedule

WEIGHTINGS = ("none", "min_snr")


def snr_weight(snr: jax.Array, prediction: str, weighting: str, gamma: float) -> jax.Array:
  """Per-example loss weight, `[B]`.

  Min-SNR-gamma (Hang et al. 2023, eq. 9 and sec. 3.4) weights the x0-space error by
  min(SNR, gamma). In eps space that is min(SNR, gamma) / SNR, in v space
  min(SNR, gamma) / (SNR + 1).
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}")
  if weighting == "none":
    return jnp.ones_like(snr)
  clipped = jnp.minimum(snr, gamma)
  return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]


def make_loss_fn(
    apply_fn: Callable,
    schedule: Schedule,
    *,
    prediction: str = "eps",
    weighting: str = "none",
    min_snr_gamma: float = 5.0,
    null_cond: Optional[Mapping[str, Any]] = None,
    cond_dropout: float = 0.0,
    low_res_noise: float = 0.0,
) -> Callable:
  """Builds the training loss.

  Args:
    apply_fn: the model, `apply_fn(params, x_t, t, cond=None, *, train, rng) -> prediction`.
    schedule: the noise schedule.
    prediction: what the model predicts: "eps", "x0" or "v".
    weighting: "none" (plain MSE) or "min_snr".
    min_snr_gamma: gamma of min-SNR weighting.
    null_cond: the model's null condition (`diffax.models.Model.null_cond`); needed when
      cond_dropout > 0.
    cond_dropout: probability of replacing an example's condition by the null condition, which
      trains the unconditional model of classifier-free guidance alongside the conditional one
      (`diffax.conditioning.drop`; one mechanism for labels, embeddings and text).
    low_res_noise: the highest noise level s of the noise-conditioning augmentation of a
      super-resolution model's `cond["low_res"]` (Imagen): each example draws s ~ U[0,
      low_res_noise], its low_res becomes `conditioning.augment_low_res(low_res, s, noise)`
      and `cond["noise_level"]` is s. 0: no augmentation.

  Returns:
    `loss_fn(params, batch, rng) -> (loss, aux)`. batch holds `"x"` `[B, ...]`, the clean data
    (images in [-1, 1], or any other shape), and optionally `"cond"`, the conditioning dict.
    loss is a scalar and aux a dict of scalar metrics: `loss`, `mse` (unweighted) and
    `mse_t0..3` (mean MSE per quarter of [0, T)). A super-resolution batch's cond holds
    `"low_res"` (clean; the loss augments it).
    An optional `"index"` `i32[B]` (added by the training step) gives each example's position
    in the global batch: each example's t, noise and dropout coin then come from
    `fold_in(rng', index)`, so a micro-batch of gradient accumulation draws exactly what its
    examples draw in the whole batch. Without it the batch's values are drawn at once.
  """
  diffusion.check_prediction(prediction)
  snr_weight(jnp.ones(()), prediction, weighting, min_snr_gamma)  # validates `weighting` early
  if not 0.0 <= cond_dropout <= 1.0:
    raise ValueError(f"cond_dropout must lie in [0, 1], got {cond_dropout}")
  if not 0.0 <= low_res_noise <= 1.0:
    raise ValueError(f"low_res_noise must lie in [0, 1], got {low_res_noise}")
  if cond_dropout > 0 and not null_cond:
    raise ValueError("cond_dropout > 0 needs the model's null_cond (a conditional model): "
                     "there is no condition to drop")
  num_steps = schedule.num_steps

  def draw_per_example(rng, index, example_shape, dtype):
    """t, noise and the dropout coin of each example, keyed on its global position."""
    def draw(key):
      t_key, noise_key, drop_key = jax.random.split(key, 3)
      return (jax.random.randint(t_key, (), 0, num_steps),
              jax.random.normal(noise_key, example_shape, dtype),
              jax.random.bernoulli(drop_key, cond_dropout))
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)  # [B]
    return jax.vmap(draw)(keys)

  def augment(cond, rng, index):
    """cond with its low_res noised to a random level s, told as noise_level (Imagen)."""
    low = cond["low_res"]  # [B, h, w, C]
    def draw(key):
      level_key, noise_key = jax.random.split(key)
      return (jax.random.uniform(level_key, (), jnp.float32, 0.0, low_res_noise),
              jax.random.normal(noise_key, low.shape[1:], low.dtype))
    if index is None:
      keys = jax.random.split(rng, low.shape[0])
    else:
      keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)
    level, noise = jax.vmap(draw)(keys)  # [B], [B, h, w, C]
    return dict(cond, low_res=conditioning.augment_low_res(low, level, noise),
                noise_level=level)

  def loss_fn(params, batch, rng):
    x0 = batch["x"]  # [B, ...]
    chex.assert_rank(x0, {2, 3, 4, 5})
    batch_size = x0.shape[0]
    t_rng, noise_rng, drop_rng, model_rng = jax.random.split(rng, 4)
    augment_rng = jax.random.fold_in(drop_rng, 1)  # noise-conditioning augmentation
    index = batch.get("index")  # i32[B] or None
    if index is None:  # the whole batch's draws at once
      t = jax.random.randint(t_rng, (batch_size,), 0, num_steps)  # [B]
      noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
      dropped = jax.random.bernoulli(drop_rng, cond_dropout, (batch_size,))
    else:  # per example, so that any split of the global batch draws the same values
      t, noise, dropped = draw_per_example(t_rng, index, x0.shape[1:], x0.dtype)
      model_rng = jax.random.fold_in(model_rng, index[0])  # distinct dropout per micro-batch
    alpha, sigma = diffusion.alpha_sigma(schedule, t, x0)
    x_t = alpha * x0 + sigma * noise

    cond = batch.get("cond")
    if cond is not None:
      chex.assert_tree_shape_prefix(cond, (batch_size,))
      if cond_dropout > 0:
        cond = conditioning.drop(cond, null_cond, jnp.logical_not(dropped))
      if low_res_noise > 0 and "low_res" in cond:
        cond = augment(cond, augment_rng, index)

    output = apply_fn(params, x_t, t, cond, train=True, rng=model_rng)
    tgt = diffusion.target(x0, noise, alpha, sigma, prediction)
    mse = jnp.mean(jnp.square(output.astype(jnp.float32) - tgt), axis=range(1, x0.ndim))  # [B]
    snr = jnp.exp(schedule.log_snr[t])  # [B]
    weight = snr_weight(snr, prediction, weighting, min_snr_gamma)  # [B]
    loss = jnp.mean(weight * mse)

    quarter = (4 * t) // num_steps  # [B], in 0..3
    aux = {"loss": loss, "mse": jnp.mean(mse)}
    for q in range(4):
      in_q = quarter == q
      aux[f"mse_t{q}"] = jnp.sum(jnp.where(in_q, mse, 0.0)) / jnp.maximum(jnp.sum(in_q), 1)
    return loss, aux

  return loss_fn
