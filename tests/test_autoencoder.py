"""The KL autoencoder and its loss as library functions: shapes and their errors, the KL term
against the closed form (and PyTorch's), PSNR and the hinge loss against their definitions,
LDM's adaptive weight against a brute-force gradient, the two GAN players' gradients kept
apart, and the latent helpers (scale factor, mask downsampling).

One tiny autoencoder and discriminator are shared; other shapes are checked with
`jax.eval_shape`, so little compiles.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import autoencoder_loss
from diffax import latent
from diffax import models

TINY = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=2,
            mid_attention=False, num_groups=4)


@pytest.fixture(scope="module")
def tiny():
  """(autoencoder, discriminator, params {"autoencoder", "discriminator"}, images [4, 8, 8, 1])
  with params perturbed away from the initialization."""
  ae = models.create_autoencoder(sample_shape=(8, 8, 1), **TINY)
  disc = models.create_discriminator(sample_shape=(8, 8, 1), base_channels=8, num_layers=1,
                                     num_groups=4)
  shapes = jax.eval_shape(lambda k: autoencoder_loss.init_params(ae, disc, k), jax.random.key(0))
  rng = np.random.default_rng(0)  # random params: no layer starts at zero
  params = jax.tree.map(lambda p: 0.2 * rng.standard_normal(p.shape, np.float32), shapes)
  x = np.tanh(rng.standard_normal((4, 8, 8, 1))).astype(np.float32)
  return ae, disc, params, x


def test_shapes_for_each_downsampling_factor():
  for size, mult, latent_size in ((8, (1, 2), 4), (28, (1, 2, 2), 7), (32, (1, 2, 4, 4), 4)):
    ae = models.create_autoencoder(sample_shape=(size, size, 3), **dict(TINY, channel_mult=mult,
                                                                         latent_channels=4))
    assert ae.factor == size // latent_size
    assert ae.latent_shape == (latent_size, latent_size, 4)
    params = jax.eval_shape(ae.init_fn, jax.random.key(0))
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    mean, logvar = jax.eval_shape(ae.encode, params, x)
    assert mean.shape == logvar.shape == (2, latent_size, latent_size, 4)
    assert jax.eval_shape(ae.decode, params, mean).shape == (2, size, size, 3)


@pytest.mark.parametrize("overrides, message", [
    (dict(sample_shape=(28, 28, 1), channel_mult=(1, 2, 2, 2)),
     r"image size 28x28 must be divisible by the downsampling factor f=2\*\*\(len\(channel_mult\)-1\)=8"),
    (dict(num_groups=3), r"num_groups=3 must divide every channel count"),
    (dict(latent_channels=0), r"latent_channels must be an int >= 1"),
    (dict(dtype="fp8"), r"unknown dtype 'fp8'"),
])
def test_bad_architecture_is_a_clear_error(overrides, message):
  kwargs = dict(TINY, sample_shape=(8, 8, 1))
  kwargs.update(overrides)
  with pytest.raises(ValueError, match=message):
    models.create_autoencoder(**kwargs)


def test_discriminator_too_deep_for_the_image_or_bad_groups():
  with pytest.raises(ValueError, match=r"num_layers=3 leaves no patch of a 8x8 image"):
    models.create_discriminator(sample_shape=(8, 8, 1), num_layers=3)
  with pytest.raises(ValueError, match=r"num_groups=3, must divide its channel counts \[16\]"):
    models.create_discriminator(sample_shape=(8, 8, 1), base_channels=8, num_layers=1,
                                num_groups=3)


# --- the loss's terms against their definitions -----------------------------------------------

def test_kl_is_the_closed_form_of_a_diagonal_gaussian():
  """Against PyTorch's KL(Normal || Normal) summed over the latent, and a Monte Carlo
  estimate of E_q[log q(z) - log p(z)]."""
  import torch  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  mean = rng.normal(0, 2, (3, 4, 4, 2)).astype(np.float32)
  logvar = rng.normal(0, 1, (3, 4, 4, 2)).astype(np.float32)
  ours = np.asarray(autoencoder_loss.kl_divergence(mean, logvar))  # [3]
  q = torch.distributions.Normal(torch.tensor(mean), torch.tensor(np.exp(0.5 * logvar)))
  p = torch.distributions.Normal(0.0, 1.0)
  theirs = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3)).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  # Monte Carlo: 50,000 draws of the first example's posterior.
  std = np.exp(0.5 * logvar[0])
  z = mean[0] + std * rng.standard_normal((50_000, *mean.shape[1:]))
  log_q = -0.5 * (((z - mean[0]) / std) ** 2 + logvar[0])  # constants cancel with log p's
  log_p = -0.5 * z**2
  estimate = (log_q - log_p).sum(axis=(1, 2, 3))
  assert abs(estimate.mean() - ours[0]) < 4 * estimate.std() / np.sqrt(len(estimate))
  np.testing.assert_allclose(autoencoder_loss.kl_divergence(np.zeros((1, 2)), np.zeros((1, 2))),
                             [0.0])


def test_psnr_and_reconstruction_errors():
  x = np.zeros((2, 4, 4, 1), np.float32)
  x_rec = np.full_like(x, 0.2)  # MSE 0.04 on a [-1, 1] range of 2: 10 log10(4 / 0.04) = 20 dB
  np.testing.assert_allclose(autoencoder_loss.psnr(x, x_rec), [20.0, 20.0], rtol=1e-6)
  np.testing.assert_allclose(autoencoder_loss.reconstruction_error(x, x_rec, "l1"), [3.2, 3.2],
                             rtol=1e-6)
  np.testing.assert_allclose(autoencoder_loss.reconstruction_error(x, x_rec, "l2"),
                             [0.64, 0.64], rtol=1e-6)
  with pytest.raises(ValueError, match=r"unknown reconstruction 'l3'"):
    autoencoder_loss.reconstruction_error(x, x_rec, "l3")


def test_hinge_loss():
  real = np.array([2.0, 0.5, -1.0])   # relu(1 - D): 0, 0.5, 2 -> mean 5/6
  fake = np.array([-2.0, 0.0, 1.0])   # relu(1 + D): 0, 1, 2 -> mean 1
  np.testing.assert_allclose(autoencoder_loss.hinge_d_loss(real, fake), 0.5 * (5 / 6 + 1),
                             rtol=1e-6)


def conv_out_kernel_grad(loss_of_params, params):
  """d loss / d (the decoder's last conv kernel), by differentiating the whole model."""
  return jax.grad(loss_of_params)(params)["decoder"]["conv_out"]["kernel"]


@pytest.fixture(scope="module")
def computed(tiny):
  """`computed(step)`: everything the tests below check, from one compiled program (the step
  is traced): the loss's aux, gradients of the GAN loss, of the plain loss, of each player's
  own loss, brute-force last-layer gradients, and decodings."""
  ae, disc, params, x = tiny
  rng = jax.random.key(3)
  gan = autoencoder_loss.make_loss_fn(ae, disc, disc_weight=0.5, disc_start=5, sample=False)
  plain = autoencoder_loss.make_loss_fn(ae, None)  # decodes posterior draws
  plain_mean = autoencoder_loss.make_loss_fn(ae, None, sample=False)  # as `gan`

  @jax.jit
  def run(params, step):
    batch = {"x": x, "step": jnp.full((4,), step)}
    out = {"aux": gan(params, batch, rng)[1]}
    out["total"] = jax.grad(lambda p: gan(p, batch, rng)[0])(params)
    out["without"] = jax.grad(lambda a: plain_mean({"autoencoder": a}, batch, rng)[0])(
        params["autoencoder"])
    out["ae_alone"] = jax.grad(  # the autoencoder's loss: rec + KL + d_weight * g_loss, D fixed
        lambda a: gan(dict(params, autoencoder=a), batch, rng)[1]["ae_loss"])(
            params["autoencoder"])
    out["disc_alone"] = jax.grad(  # the hinge loss on the reconstructions, held fixed
        lambda d: gan(dict(params, discriminator=d), batch, rng)[1]["d_loss"])(
            params["discriminator"])

    def reconstruct(ae_params):
      mean, _ = ae.encode(ae_params, x)
      return ae.decode(ae_params, mean)

    rec = lambda p: jnp.mean(autoencoder_loss.reconstruction_error(x, reconstruct(p)))
    g_loss = lambda p: -jnp.mean(disc.apply_fn(params["discriminator"], reconstruct(p)))
    out["rec_grad"] = conv_out_kernel_grad(rec, params["autoencoder"])
    out["g_grad"] = conv_out_kernel_grad(g_loss, params["autoencoder"])
    mean, _ = ae.encode(params["autoencoder"], x)
    out["decoded"] = ae.decode(params["autoencoder"], mean)
    out["head_of_features"] = ae.decode_head(
        params["autoencoder"], ae.decode_features(params["autoencoder"], mean))
    # The plain loss on the batch reversed, each example keeping its index: the same draws.
    index = jnp.arange(4)
    out["rec_in_order"] = plain({"autoencoder": params["autoencoder"]},
                                {"x": x, "index": index}, rng)[1]["rec"]
    out["rec_reversed"] = plain({"autoencoder": params["autoencoder"]},
                                {"x": x[::-1], "index": index[::-1]}, rng)[1]["rec"]
    out["rec_unkeyed"] = plain({"autoencoder": params["autoencoder"]}, {"x": x[::-1]},
                               rng)[1]["rec"]
    return out

  cache = {}
  return lambda step: cache.setdefault(step, jax.device_get(run(params, step)))


def test_decode_is_head_of_features(computed):
  out = computed(4)
  np.testing.assert_allclose(out["head_of_features"], out["decoded"], atol=1e-6)


def test_adaptive_weight_is_ldm_s_gradient_ratio(computed):
  """LDM: d_weight = disc_weight * |grad_w rec| / (|grad_w g_loss| + 1e-4), w the decoder's
  last layer (here with the posterior mean decoded: sample=False). The loss differentiates
  through that layer alone; the reference through the whole model."""
  out = computed(4)
  expected = 0.5 * np.linalg.norm(out["rec_grad"]) / (np.linalg.norm(out["g_grad"]) + 1e-4)
  np.testing.assert_allclose(out["aux"]["d_weight"], expected, rtol=1e-4)
  assert expected > 0


def test_gan_players_get_their_own_gradients(computed):
  """The one scalar's gradient is, for the autoencoder, the gradient of its own loss with the
  discriminator held fixed, and for the discriminator that of the hinge loss on fixed
  reconstructions, switched on at disc_start; before disc_start the autoencoder trains as if
  there were no GAN and the discriminator not at all."""
  close = lambda a, b: [np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-6)
                        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  before, after = computed(4), computed(5)
  assert before["aux"]["disc_factor"] == 0 and after["aux"]["disc_factor"] == 1
  close(before["total"]["autoencoder"], before["without"])
  assert all(np.all(g == 0) for g in jax.tree.leaves(before["total"]["discriminator"]))
  close(after["total"]["autoencoder"], after["ae_alone"])
  close(after["total"]["discriminator"], after["disc_alone"])
  changed = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(after["ae_alone"]),
                                                 jax.tree.leaves(before["without"]))]
  assert max(changed) > 1e-5  # the adversarial term moved the autoencoder's gradient
  assert max(np.abs(g).max() for g in jax.tree.leaves(after["disc_alone"])) > 0


def test_posterior_draws_are_keyed_on_the_example_index(computed):
  """With "index" (as the train step adds it), an example's posterior draw depends on its
  position in the global batch, not on where it sits in a (micro-)batch."""
  out = computed(4)
  np.testing.assert_allclose(out["rec_reversed"], out["rec_in_order"], rtol=1e-6)
  assert abs(out["rec_unkeyed"] - out["rec_in_order"]) > 1e-6


# --- latent helpers -------------------------------------------------------------------------

def test_scale_factor_makes_latents_unit_variance():
  z = np.random.default_rng(2).normal(3.0, 5.0, (500, 4, 4, 2))
  scale = latent.scale_factor(z)
  np.testing.assert_allclose((z * scale).std(), 1.0, rtol=1e-12)
  with pytest.raises(ValueError, match="no scale factor"):
    latent.scale_factor(np.ones((4, 2)))


def test_encode_decode_apply_the_scale(tiny):
  ae, _, params, x = tiny

  @jax.jit
  def run(p):
    mean, _ = ae.encode(p, x)
    return (mean, latent.encode(ae, p, x, 0.5), latent.decode(ae, p, 0.5 * mean, 0.5),
            ae.decode(p, mean),
            latent.encode(ae, p, x, 1.0, noise=latent.noise_per_example(
                jax.random.key(0), jnp.arange(4), ae.latent_shape)),
            latent.noise_per_example(jax.random.key(0), jnp.arange(4)[::-1], (3,)),
            latent.noise_per_example(jax.random.key(0), jnp.arange(4), (3,)))

  mean, scaled, decoded, reference, drawn, reversed_noise, noise = run(params["autoencoder"])
  np.testing.assert_allclose(scaled, 0.5 * mean, rtol=1e-6)
  np.testing.assert_allclose(decoded, reference, rtol=1e-5, atol=1e-6)
  assert np.abs(drawn - mean).max() > 1e-4  # a draw, not the mean
  np.testing.assert_array_equal(reversed_noise, noise[::-1])  # row i is keyed on index i


def test_downsample_mask_keeps_only_wholly_known_blocks():
  mask = np.zeros((1, 4, 4, 2), bool)
  mask[0, :2, :] = True          # the top half is known, both channels
  mask[0, 2, 0, 0] = True        # one known pixel in one channel of a block: not enough
  mask[0, 2:, 2:, :] = True      # the bottom-right block
  known = latent.downsample_mask(mask, 2)
  assert known.shape == (1, 2, 2, 1)
  np.testing.assert_array_equal(known[0, ..., 0], [[True, True], [False, True]])
  np.testing.assert_array_equal(latent.downsample_mask(jnp.asarray(mask), 2), known)
  with pytest.raises(ValueError, match=r"3x4 pixels do not split into 2x2 blocks"):
    latent.downsample_mask(np.ones((3, 4, 1)), 2)
