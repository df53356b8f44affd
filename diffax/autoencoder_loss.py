"""The training objective of the KL autoencoder of latent diffusion (Rombach et al. 2022, sec. 3;
the `LPIPSWithDiscriminator` loss of their code, without the LPIPS term):

  loss = rec + kl_weight * KL(q(z | x) || N(0, I)) + disc_factor * d_weight * g_loss

- rec: the L1 (LDM's choice) or L2 distance between x and the decoding of a draw z ~ q(z | x),
  summed over pixels; KL: the closed form for a diagonal Gaussian, summed over latent entries.
  Both are averaged over the batch, so `kl_weight` means what it means in LDM's configs (1e-6).
- the optional adversarial term (a PatchGAN discriminator, Isola et al. 2017, with the hinge
  loss): `g_loss = -mean(D(x_rec))`, weighted by LDM's adaptive weight
  `d_weight = disc_weight * |grad_w rec| / (|grad_w g_loss| + 1e-4)` (w: the decoder's last
  conv kernel; clipped to [0, 1e4], not differentiated), and switched on at step `disc_start`
  (`disc_factor` is 0 before, 1 from then on).

Two players, one gradient. The autoencoder and the discriminator are trained on disjoint
parameters, `params = {"autoencoder": ..., "discriminator": ...}`, by one scalar

  total = loss(autoencoder; D held fixed) + disc_factor * d_loss(discriminator; x_rec held fixed)

in which each term stops the gradient to the other player's parameters (and the discriminator
sees the reconstructions as constants). Its gradient is exactly the pair of gradients of LDM's
two optimizers, taken at the same state: one optimizer over the union of the parameters is two
optimizers (Adam is per parameter), so the GAN trains in the ordinary one-optimizer train step.
What one optimizer cannot do is give the players different learning rates, and a global-norm
gradient clip would clip them jointly; LDM uses neither.
"""

from typing import Callable, Optional

import chex
import jax
import jax.numpy as jnp

RECONSTRUCTIONS = ("l1", "l2")

# PSNR is taken for images in [-1, 1]: a peak-to-peak range of 2.
PEAK_TO_PEAK = 2.0


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over the other axes.

  The closed form 0.5 * sum(mean^2 + var - 1 - log var) (Kingma & Welling 2014, appendix B).

  Args:
    mean, logvar: the posterior's parameters, `[B, ...]`.

  Returns:
    `f32[B]`.
  """
  terms = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(terms, axis=tuple(range(1, mean.ndim)))


def reconstruction_error(x: jax.Array, x_rec: jax.Array, kind: str = "l1") -> jax.Array:
  """The L1 or squared L2 distance per example, summed over pixels, `f32[B]`."""
  if kind not in RECONSTRUCTIONS:
    raise ValueError(f"unknown reconstruction {kind!r}; choose one of "
                     f"{list(RECONSTRUCTIONS)}")
  diff = x_rec.astype(jnp.float32) - x.astype(jnp.float32)
  per_pixel = jnp.abs(diff) if kind == "l1" else jnp.square(diff)
  return jnp.sum(per_pixel, axis=tuple(range(1, x.ndim)))


def psnr(x: jax.Array, x_rec: jax.Array) -> jax.Array:
  """Peak signal-to-noise ratio per example in dB for images in [-1, 1], `f32[B]`:
  10 log10(2^2 / MSE), the PSNR of the same images in 0..255."""
  mse = jnp.mean(jnp.square(x_rec.astype(jnp.float32) - x.astype(jnp.float32)),
                 axis=tuple(range(1, x.ndim)))
  return 10.0 * jnp.log10(PEAK_TO_PEAK**2 / jnp.maximum(mse, 1e-12))


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """The discriminator's hinge loss (Lim & Ye 2017; LDM's default), a scalar:
  0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec))))."""
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) +
                jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def adaptive_weight(rec_grad: jax.Array, g_grad: jax.Array, disc_weight: float) -> jax.Array:
  """LDM's balance of the adversarial term: disc_weight * |rec_grad| / (|g_grad| + 1e-4),
  clipped to [0, 1e4] and held constant (no gradient). The gradients are of the reconstruction
  loss and of the generator loss with respect to the decoder's last layer."""
  weight = jnp.linalg.norm(rec_grad) / (jnp.linalg.norm(g_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, 1e4) * disc_weight)


def sample_posterior(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw z = mean + exp(logvar / 2) * noise of q(z | x) (the reparameterization)."""
  return mean + jnp.exp(0.5 * logvar) * noise


def init_params(autoencoder, discriminator, rng: jax.Array) -> dict:
  """The parameters `make_loss_fn`'s loss trains: `{"autoencoder": ...}`, plus
  `"discriminator"` when there is one."""
  ae_rng, disc_rng = jax.random.split(rng)
  params = {"autoencoder": autoencoder.init_fn(ae_rng)}
  if discriminator is not None:
    params["discriminator"] = discriminator.init_fn(disc_rng)
  return params


def make_loss_fn(autoencoder, discriminator=None, *, reconstruction: str = "l1",
                 kl_weight: float = 1e-6, disc_weight: float = 0.5, disc_start: int = 0,
                 sample: bool = True) -> Callable:
  """Builds the autoencoder's loss.

  Args:
    autoencoder: a `diffax.models.autoencoder.Autoencoder` (its encode, decode_features,
      decode_head).
    discriminator: a `diffax.models.autoencoder.Discriminator`, or None for no adversarial
      term (then params hold no "discriminator").
    reconstruction: "l1" (LDM) or "l2".
    kl_weight: the weight of the KL term (LDM: 1e-6).
    disc_weight: the adversarial term's weight before the adaptive balance (LDM: 0.5).
    disc_start: the training step from which the adversarial terms count (LDM warms up the
      autoencoder alone first, e.g. 50,001 steps).
    sample: decode a draw of the posterior (LDM) instead of its mean.

  Returns:
    `loss_fn(params, batch, rng) -> (loss, aux)`: params `{"autoencoder": ...}` plus
    `"discriminator"` with a discriminator; batch `{"x": [B, H, W, C] in [-1, 1]}`, and
    `"step"` `i32[B]` (the training step, the same in every row; needed for `disc_start` with
    a discriminator) and optionally `"index"` `i32[B]` (each example's position in the global
    batch: its posterior draw is then keyed on it, as in `diffax.losses`). aux holds scalar
    means over the batch: `loss`, `rec` (per pixel), `mse`, `psnr` (dB), `kl` (per example);
    with a discriminator, loss is the sum of both players' terms (the scalar differentiated)
    and aux adds `ae_loss` (the autoencoder's), `g_loss`, `d_loss`, `d_weight`,
    `disc_factor`, `logits_real`, `logits_fake`.
  """
  reconstruction_error(jnp.zeros((1, 1)), jnp.zeros((1, 1)), reconstruction)  # checks the name
  for name, value in (("kl_weight", kl_weight), ("disc_weight", disc_weight),
                      ("disc_start", disc_start)):
    if not value >= 0:
      raise ValueError(f"{name} must be >= 0, got {value}")

  def draw_noise(rng, index, shape):
    if index is None:
      return jax.random.normal(rng, shape)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, index)  # [B]
    return jax.vmap(lambda k: jax.random.normal(k, shape[1:]))(keys)

  def loss_fn(params, batch, rng):
    x = batch["x"]  # [B, H, W, C]
    chex.assert_rank(x, 4)
    ae_params = params["autoencoder"]
    noise_rng, enc_rng, dec_rng = jax.random.split(rng, 3)
    index: Optional[jax.Array] = batch.get("index")
    if index is not None:  # distinct dropout per micro-batch, as in diffax.losses
      enc_rng, dec_rng = (jax.random.fold_in(r, index[0]) for r in (enc_rng, dec_rng))
    mean, logvar = autoencoder.encode(ae_params, x, train=True, rng=enc_rng)
    z = mean
    if sample:
      z = sample_posterior(mean, logvar, draw_noise(noise_rng, index, mean.shape))
    features = autoencoder.decode_features(ae_params, z, train=True, rng=dec_rng)
    x_rec = autoencoder.decode_head(ae_params, features)  # [B, H, W, C]

    rec = reconstruction_error(x, x_rec, reconstruction)  # [B]
    kl = kl_divergence(mean, logvar)  # [B]
    loss = jnp.mean(rec) + kl_weight * jnp.mean(kl)
    num_pixels = x[0].size
    aux = {"loss": loss,
           "rec": jnp.mean(rec) / num_pixels,
           "mse": jnp.mean(jnp.square(x_rec - x)),
           "psnr": jnp.mean(psnr(x, x_rec)),
           "kl": jnp.mean(kl)}
    if discriminator is None:
      return loss, aux

    step = batch["step"][0]
    disc_factor = (step >= disc_start).astype(jnp.float32)
    disc_params = params["discriminator"]
    frozen_disc = jax.lax.stop_gradient(disc_params)
    logits_fake = discriminator.apply_fn(frozen_disc, x_rec)
    g_loss = -jnp.mean(logits_fake)

    # LDM's adaptive weight: gradients with respect to the decoder's last conv kernel alone.
    head = jax.lax.stop_gradient(features)
    kernel = ae_params["decoder"]["conv_out"]["kernel"]

    def with_kernel(k):
      p = {**ae_params, "decoder": {**ae_params["decoder"],
                                    "conv_out": {**ae_params["decoder"]["conv_out"],
                                                 "kernel": k}}}
      return autoencoder.decode_head(p, head)

    rec_grad = jax.grad(lambda k: jnp.mean(reconstruction_error(x, with_kernel(k),
                                                                 reconstruction)))(kernel)
    g_grad = jax.grad(lambda k: -jnp.mean(discriminator.apply_fn(frozen_disc,
                                                                  with_kernel(k))))(kernel)
    d_weight = adaptive_weight(rec_grad, g_grad, disc_weight)
    loss = loss + disc_factor * d_weight * g_loss

    logits_real = discriminator.apply_fn(disc_params, x)
    logits_rec = discriminator.apply_fn(disc_params, jax.lax.stop_gradient(x_rec))
    d_loss = hinge_d_loss(logits_real, logits_rec)
    total = loss + disc_factor * d_loss
    aux.update(loss=total, ae_loss=loss, g_loss=g_loss, d_loss=d_loss, d_weight=d_weight,
               disc_factor=disc_factor, logits_real=jnp.mean(logits_real),
               logits_fake=jnp.mean(logits_rec))
    return total, aux

  return loss_fn
