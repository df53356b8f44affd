"""Tests of classifier-free guidance, dynamic thresholding, inpainting (RePaint) and SDEdit, on
Gaussian data laws whose exact noise predictors are known.

Conditional toy: class k has law N(MUS[k], STD^2) per pixel; the null label K stands for another
Gaussian, N(MUS[K], STD^2), as the unconditional model. For Gaussians with one variance the exact
eps is affine in the mean, so guidance with scale w is exactly the model of the class mean
MUS[K] + w (MUS[k] - MUS[K]): guided samples can be checked against plain ones.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import sampling
from diffax import schedules
from diffax.sampling import editing
from diffax.sampling import guidance
from diffax.sampling import loop
from diffax.sampling import spacing
from conftest import CompileCounter

T = 1000
S = schedules.cosine(T)
AB = np.asarray(S.alphas_cumprod, np.float64)
STD = np.array([0.05, 0.5, 1.0, 0.3]).reshape(2, 2, 1)
K = 3  # classes 0..K-1, null label K
B = 256
SHAPE = (B, 2, 2, 1)
RNG = jax.random.key(0)
LABELS = jnp.arange(B, dtype=jnp.int32) % K
# Rows 0..K-1: class means; row K: the null label's mean; later rows (up to B) free for tests.
MUS = np.zeros((B, 2, 2, 1))
MUS[:K + 1] = np.array([[0.5, -1.0, 0.0, 2.0], [-0.5, 0.3, 1.0, -0.7], [0.1, 0.8, -1.2, 0.4],
                        [0.0, 0.0, 0.1, 0.5]]).reshape(K + 1, 2, 2, 1)


def gaussian_eps(ab_table, mu, std2, x_t, t):
  """E[eps | x_t] for x0 ~ N(mu, std2) (mu broadcast against x_t)."""
  ab = ab_table[t].reshape(-1, 1, 1, 1)
  alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
  return sigma * (x_t - alpha * mu) / (alpha**2 * std2 + sigma**2)


def class_apply(params, x_t, t, cond):
  """A class-conditional model: params = (alpha-bars, means [R, 2, 2, 1], std^2)."""
  ab_table, mus, std2 = params
  return gaussian_eps(ab_table, mus[cond["label"]], std2, x_t, t)


def gauss_apply(params, x_t, t):
  """An unconditional model of N(mus[0], std^2) (same params as class_apply)."""
  ab_table, mus, std2 = params
  return gaussian_eps(ab_table, mus[0], std2, x_t, t)


def params_with(mus=MUS):
  return (jnp.asarray(AB, jnp.float32), jnp.asarray(mus, jnp.float32),
          jnp.asarray(STD**2, jnp.float32))


PARAMS = params_with()
GUIDED = sampling.make_sampler(class_apply, S, SHAPE, sampler="ddim", max_steps=50, null_cond={"label": K})
PLAIN = sampling.make_sampler(class_apply, S, SHAPE, sampler="ddim", max_steps=50)


# ---------------------------------------------------------------------------------------------
# Classifier-free guidance.

def test_guidance_scale_0_is_unconditional_and_1_conditional():
  null = jnp.full((B,), K, jnp.int32)
  uncond = PLAIN(PARAMS, RNG, num_steps=20, cond={"label": null})
  cond = PLAIN(PARAMS, RNG, num_steps=20, cond={"label": LABELS})
  np.testing.assert_allclose(GUIDED(PARAMS, RNG, num_steps=20, cond={"label": LABELS}, guidance_scale=0.0),
                             uncond, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(GUIDED(PARAMS, RNG, num_steps=20, cond={"label": LABELS}, guidance_scale=1.0),
                             cond, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(cond - uncond)).max() > 0.5
  with pytest.raises(ValueError, match="label"):
    GUIDED.knobs(cond={"label": np.full(B, K)})  # the null label is not a class
  # Without labels a guided sampler draws the null label's (unconditional) samples.
  np.testing.assert_allclose(GUIDED(PARAMS, RNG, num_steps=20), uncond, rtol=1e-5, atol=1e-5)


def test_guidance_extrapolates_to_the_guided_class_mean():
  """With scale w (per sample here), the guided eps is the exact eps of the class mean
  MUS[K] + w (MUS[k] - MUS[K]); the samples equal plain samples of that class."""
  w = np.linspace(-1.0, 4.0, B)
  guided = GUIDED(PARAMS, RNG, num_steps=20, cond={"label": LABELS}, guidance_scale=w)
  labels = np.asarray(LABELS)
  mus = MUS[K] + w.reshape(-1, 1, 1, 1) * (MUS[labels] - MUS[K])  # [B, 2, 2, 1], row i: sample i
  plain = PLAIN(params_with(mus), RNG, num_steps=20, cond={"label": jnp.arange(B)})
  np.testing.assert_allclose(guided, plain, rtol=1e-3, atol=1e-3)  # float32, |w| up to 4


def test_both_halves_come_from_one_batched_model_call():
  calls = []

  def apply_fn(params, x_t, t, cond):
    calls.append((x_t.shape[0], t.shape[0], cond["label"].shape[0]))  # recorded while tracing
    return class_apply(params, x_t, t, cond)

  fn = sampling.make_sampler(apply_fn, S, SHAPE, sampler="dpmpp_2m", max_steps=5, null_cond={"label": K})
  fn(PARAMS, RNG, cond={"label": LABELS}, guidance_scale=2.0)
  assert calls == [(2 * B, 2 * B, 2 * B)]  # one call per step, on the doubled batch
  # ...and it equals two separate calls combined.
  x = jax.random.normal(jax.random.key(1), SHAPE)
  t = jnp.full((B,), 400, jnp.int32)
  w = jnp.linspace(0.0, 5.0, B)
  guided = guidance.classifier_free_model(class_apply, PARAMS, {"label": LABELS}, {"label": K},
                                         w)(x, t)
  out_c = class_apply(PARAMS, x, t, {"label": LABELS})
  out_u = class_apply(PARAMS, x, t, {"label": jnp.full((B,), K)})
  expected = out_u + w.reshape(-1, 1, 1, 1) * (out_c - out_u)
  np.testing.assert_allclose(guided, expected, rtol=1e-6, atol=1e-6)


def test_vmap_over_guidance_scales_and_seeds_is_one_compile():
  scales = jnp.array([0.0, 1.0, 3.0])
  keys = jax.random.split(jax.random.key(5), 3)
  by_scale = jax.jit(jax.vmap(lambda w: GUIDED(PARAMS, RNG, num_steps=10, cond={"label": LABELS},
                                                guidance_scale=w)))
  by_seed = jax.jit(jax.vmap(lambda k: GUIDED(PARAMS, k, num_steps=10, cond={"label": LABELS},
                                               guidance_scale=3.0)))
  with CompileCounter() as counter:
    sweep = by_scale(scales)
  assert len(counter.names) == 1, counter.names
  with CompileCounter() as counter:
    seeds = by_seed(keys)
  assert len(counter.names) == 1, counter.names
  assert sweep.shape == (3,) + SHAPE and seeds.shape == (3,) + SHAPE
  for i in range(3):
    np.testing.assert_allclose(
        sweep[i], GUIDED(PARAMS, RNG, num_steps=10, cond={"label": LABELS}, guidance_scale=scales[i]),
        rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        seeds[i], GUIDED(PARAMS, keys[i], num_steps=10, cond={"label": LABELS}, guidance_scale=3.0),
        rtol=1e-5, atol=1e-5)


def test_guidance_labels_editing_knobs_do_not_recompile():
  traces = []

  def apply_fn(params, x_t, t, cond):
    traces.append(1)
    return class_apply(params, x_t, t, cond)

  shape = (8, 2, 2, 1)
  fn = sampling.make_sampler(apply_fn, S, shape, sampler="heun", max_steps=20, null_cond={"label": K},
                             spacing="karras")
  image = np.asarray(jax.random.normal(jax.random.key(2), shape))
  mask = np.zeros(shape, bool)
  mask[:, 0] = True
  settings = [
      dict(num_steps=20, cond={"label": np.zeros(8, np.int32)}, guidance_scale=1.0, x_known=image,
           mask=mask, resample=1, init_image=image, strength=1.0),
      dict(num_steps=6, cond={"label": np.full(8, 2, np.int32)}, guidance_scale=4.0, x_known=-image,
           mask=~mask, resample=3, init_image=2 * image, strength=0.4, eta=0.5),
      dict(num_steps=11, cond={"label": np.arange(8) % K}, guidance_scale=0.0,
           x_known=image, mask=mask, resample=2, init_image=image, strength=0.9,
           spacing="linspace"),
  ]
  knobs = [fn.knobs(**kw) for kw in settings]  # built (and their host ops run) up front
  first = fn.run(PARAMS, RNG, knobs[0])
  n = len(traces)
  with CompileCounter() as counter:
    others = [fn.run(PARAMS, RNG, k) for k in knobs[1:]]
  assert counter.names == [] and len(traces) == n, counter.names
  for other in others:
    assert np.abs(np.asarray(other - first)).max() > 1e-2
    assert np.all(np.isfinite(np.asarray(other)))


# ---------------------------------------------------------------------------------------------
# Dynamic thresholding.

def test_dynamic_threshold_matches_imagen():
  x0 = np.array(jax.random.normal(jax.random.key(3), (16, 4, 4, 2)) * 2.0)
  x0[0] *= 0.2  # a sample already inside [-1, 1]: untouched (s = 1)
  got = np.asarray(sampling.dynamic_threshold(jnp.asarray(x0), 0.9))
  s = np.maximum(np.quantile(np.abs(x0.reshape(16, -1)), 0.9, axis=1), 1.0).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(got, np.clip(x0, -s, s) / s, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[0], x0[0].astype(np.float32))
  assert np.abs(got).max() <= 1.0
  # Unlike clipping, only the top 10% of each sample saturates.
  assert np.mean(np.abs(got[1:]) >= 1.0 - 1e-6) < 0.15 < np.mean(np.abs(np.clip(x0, -1, 1)) == 1)


def test_dynamic_thresholding_bounds_guided_samples():
  fn = sampling.make_sampler(class_apply, S, SHAPE, sampler="dpmpp_2m", max_steps=50,
                             null_cond={"label": K}, threshold=0.75)
  loose = np.asarray(GUIDED(PARAMS, RNG, num_steps=20, cond={"label": LABELS}, guidance_scale=6.0))
  assert np.abs(loose).max() > 5.0  # guidance 6 sends the class means far outside [-1, 1]
  x = np.asarray(fn(PARAMS, RNG, num_steps=20, cond={"label": LABELS}, guidance_scale=6.0))
  assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 0.9


# ---------------------------------------------------------------------------------------------
# Inpainting.

N = 4096
EDIT_SHAPE = (N, 2, 2, 1)
MU0 = MUS[0]
KNOWN = np.asarray(MU0 + STD * jax.random.normal(jax.random.key(7), EDIT_SHAPE), np.float32)
MASK = np.asarray(jax.random.bernoulli(jax.random.key(8), 0.5, EDIT_SHAPE))
INPAINT = {name: sampling.make_sampler(gauss_apply, S, EDIT_SHAPE, sampler=name, max_steps=50,
                                       spacing="karras")
           for name in sampling.SAMPLERS}


@pytest.mark.parametrize("name", sorted(sampling.SAMPLERS))
def test_inpainting_keeps_known_pixels_exactly_and_fills_the_rest(name):
  fn = INPAINT[name]
  # Nothing known: the sampler's own samples, through the same program and noise.
  free = np.asarray(fn(PARAMS, RNG, num_steps=20, x_known=KNOWN, mask=np.zeros_like(MASK)))
  assert np.abs(free[MASK] - KNOWN[MASK]).max() > 0.1
  x = np.asarray(fn(PARAMS, RNG, num_steps=20, x_known=KNOWN, mask=MASK))
  np.testing.assert_array_equal(x[MASK], KNOWN[MASK])  # bit-exact
  # Pixels are independent, so the unknown ones must not notice the known ones: they are the
  # very samples of the free run (same x_T, same step noise), whatever the sampler.
  np.testing.assert_allclose(x[~MASK], free[~MASK], rtol=1e-5, atol=1e-5)
  # RePaint's resampling (r = 3): known pixels still exact, the unknown ones keep the sampler's
  # own law (independent pixels have nothing to harmonize with) up to the discretization error
  # of the extra steps. DPM-Solver++(2M) takes its repeated steps first order, which moves its
  # law towards DDIM's (std 10-15% lower at 20 steps).
  x = np.asarray(fn(PARAMS, jax.random.key(1), num_steps=20, x_known=KNOWN, mask=MASK,
                    resample=3))
  np.testing.assert_array_equal(x[MASK], KNOWN[MASK])
  for i, j in np.ndindex(2, 2):
    unknown, ref = x[:, i, j, 0][~MASK[:, i, j, 0]], free[:, i, j, 0]
    assert abs(unknown.mean() - ref.mean()) < 5 * ref.std() * np.sqrt(2.0 / len(unknown))
    assert abs(unknown.std() / ref.std() - 1) < (0.2 if name == "dpmpp_2m" else 0.08)


def test_inpaint_step_noises_known_pixels_to_the_level_it_lands_on():
  """After a step from t to t', the known pixels are a fresh draw of q(x_{t'} | x_known); on the
  last step (alpha-bar 1) they are x_known itself, bit for bit, before any final clean-up."""
  inner = sampling.SAMPLERS["ddim"](lambda x, t: gauss_apply(PARAMS, x, t))
  wrapped = editing.inpaint(inner, jnp.asarray(KNOWN), jnp.asarray(MASK))
  x = jax.random.normal(jax.random.key(4), EDIT_SHAPE)
  step = jax.jit(wrapped.step)
  for t, t_prev in ((700, 300), (40, -1)):
    ab_prev = AB[t_prev] if t_prev >= 0 else 1.0
    inputs = loop.StepInput(index=jnp.int32(3),
                            rng=jax.random.split(jax.random.key(5), EDIT_SHAPE[0]),
                            t=jnp.int32(t), t_prev=jnp.int32(t_prev),
                            alpha_bar=jnp.float32(AB[t]), alpha_bar_prev=jnp.float32(ab_prev))
    out = np.asarray(step(x, inputs))
    if t_prev < 0:
      np.testing.assert_array_equal(out[MASK], KNOWN[MASK])
    else:
      z = (out[MASK] - np.sqrt(ab_prev) * KNOWN[MASK]) / np.sqrt(1 - ab_prev)
      assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.std() - 1) < 5 / np.sqrt(2 * z.size)
      free = np.asarray(jax.jit(inner.step)(x, inputs))
      np.testing.assert_array_equal(out[~MASK], free[~MASK])  # the model's step elsewhere


RHO = 0.9


def correlated_apply(params, x_t, t):
  """E[eps | x_t] for two pixels ~ N(0, [[1, RHO], [RHO, 1]]): sigma (alpha^2 C + sigma^2 I)^-1
  x_t, in C's eigenbasis (1 +- RHO along (1, +-1) / sqrt 2)."""
  ab = params[t].reshape(-1, 1)
  alpha2, sigma = ab, jnp.sqrt(1.0 - ab)
  x = x_t.reshape(-1, 2)
  plus, minus = (x[:, 0] + x[:, 1]) / 2, (x[:, 0] - x[:, 1]) / 2  # [B]
  plus = plus / (alpha2[:, 0] * (1 + RHO) + sigma[:, 0]**2)
  minus = minus / (alpha2[:, 0] * (1 - RHO) + sigma[:, 0]**2)
  eps = sigma * jnp.stack([plus + minus, plus - minus], axis=1)
  return eps.reshape(x_t.shape)


def test_repaint_resampling_approaches_the_true_conditional():
  """Known pixel c: the other pixel's conditional is N(RHO c, 1 - RHO^2). Plain replacement is
  known to miss it (the generated half never sees the known half's noise); RePaint's resampling
  closes most of the gap."""
  shape = (8192, 1, 2, 1)
  fn = sampling.make_sampler(correlated_apply, S, shape, sampler="ddpm", max_steps=25)
  c = 1.5
  known = np.zeros(shape, np.float32)
  known[:, 0, 0, 0] = c
  mask = np.zeros(shape, bool)
  mask[:, 0, 0, 0] = True
  errors = {}
  for r in (1, 10):
    x = np.asarray(fn(S.alphas_cumprod, RNG, num_steps=25, x_known=known, mask=mask, resample=r))
    assert np.all(x[:, 0, 0, 0] == c)
    errors[r] = abs(x[:, 0, 1, 0].mean() - RHO * c)
  assert errors[1] > 0.3 and errors[10] < 0.3 * errors[1], errors


# ---------------------------------------------------------------------------------------------
# SDEdit.

def test_sdedit_strength_limits():
  fn = INPAINT["ddim"]
  # Strength 1 is an ordinary sample: the start q(x_{T-1} | init) has sqrt(ab) = 5e-5 of init,
  # and its noise is the very x_T an ordinary run draws from the same key.
  # (With the karras spacing the first level is sigma = 80, where 1/80 of init would remain.)
  ordinary = np.asarray(fn(PARAMS, RNG, num_steps=20, spacing="linspace"))
  edited = np.asarray(fn(PARAMS, RNG, num_steps=20, spacing="linspace", init_image=KNOWN,
                         strength=1.0))
  np.testing.assert_allclose(edited, ordinary, atol=1e-3)
  # Strength -> 0: only the t = 0 row runs, from q(x_0 | init): the init image to within a few
  # sigma_0 = 0.0064.
  tiny = np.asarray(fn(PARAMS, RNG, num_steps=20, spacing="linspace", init_image=KNOWN,
                       strength=1e-4))
  assert np.abs(tiny - KNOWN).max() < 0.05
  # No row left (trailing tables stop at t = 49 for 20 steps): the image itself.
  none = np.asarray(fn(PARAMS, RNG, num_steps=20, spacing="trailing", init_image=KNOWN,
                       strength=0.01))
  np.testing.assert_array_equal(none, KNOWN)


def test_sdedit_starts_at_strength_times_T():
  ts = spacing.timesteps(T, 20)
  table = loop.make_table(S, ts)
  image = jnp.ones((2, 3))
  for strength in (0.3, 0.5, 0.95):
    cut, x = editing.sdedit_start(table, image, strength, T, jnp.zeros((2, 3)))
    np.testing.assert_array_equal(np.asarray(cut.active), ts < strength * T)
    first = ts[ts < strength * T][0]
    np.testing.assert_allclose(x, np.sqrt(AB[first]) * np.ones((2, 3)), rtol=1e-6)
    assert np.asarray(cut.t_prev)[-1] == -1  # the chain still ends on clean data


def test_sdedit_of_data_keeps_the_data_law():
  """Noising a data sample to t0 gives the true marginal at t0, from which the exact model's ODE
  returns the data law: edited data samples are (up to discretization) data samples."""
  x = np.asarray(INPAINT["dpmpp_2m"](PARAMS, RNG, num_steps=30, init_image=KNOWN,
                                     strength=0.5))
  assert np.abs(x - KNOWN).mean() > 0.1  # it did change the images
  np.testing.assert_array_less(np.abs(x.mean(0) - MU0), 5 * STD / np.sqrt(N))
  np.testing.assert_allclose(x.std(0), STD, rtol=0.08)
