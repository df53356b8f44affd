"""Tests of the fast samplers (DPM-Solver++(2M), EDM Heun, Euler ancestral), the Karras spacing and
the compile-once sampler, against closed forms.

The data law is Gaussian, N(MU, STD^2) independently per pixel, so the exact noise predictor is
known and the probability-flow ODE has a closed-form solution. In EDM's coordinates
x_edm = x_t / alpha = x0 + sigma eps (sigma = sqrt((1 - ab) / ab)) the ODE is
  dx_edm / dsigma = (x_edm - D(x_edm; sigma)) / sigma,
  D = MU + STD^2 (x_edm - MU) / (STD^2 + sigma^2),
i.e. d(x_edm - MU) / dsigma = (x_edm - MU) sigma / (STD^2 + sigma^2), so x_edm - MU scales with
sqrt(STD^2 + sigma^2). From x_T at sigma_first, the ODE reaches sigma_last at
  x_edm = MU + sqrt((STD^2 + sigma_last^2) / (STD^2 + sigma_first^2)) (x_T / alpha_first - MU),
and every sampler's last step (to alpha-bar 1) returns the denoiser D there. So the exact answer
of the problem every deterministic sampler discretizes is
  x0 = MU + STD^2 (x_T / alpha_first - MU) / sqrt((STD^2 + sigma_last^2)(STD^2 + sigma_first^2)),
which with sigma_last -> 0 is the PF-ODE's own x0 = MU + STD (x_T - alpha MU) / sqrt(alpha^2 STD^2
+ sigma_vp^2) in VP terms.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffax import sampling
from diffax import schedules
from diffax.sampling import ddim
from diffax.sampling import dpm_solver
from diffax.sampling import euler_ancestral
from diffax.sampling import loop
from diffax.sampling import spacing
from conftest import CompileCounter, assert_law

T = 1000
S = schedules.cosine(T)
AB = np.asarray(S.alphas_cumprod, np.float64)
MU = np.array([0.5, -1.0, 0.0, 2.0]).reshape(2, 2, 1)
STD = np.array([0.05, 0.5, 1.0, 0.3]).reshape(2, 2, 1)
B = 256
SHAPE = (B, 2, 2, 1)
MAX_STEPS = 200


def gaussian_apply(params, x_t, t):
  """The exact E[eps | x_t] for x0 ~ N(mu, std^2): sigma (x_t - alpha mu) / (alpha^2 std^2 +
  sigma^2). params = (alpha-bar table, mu, std^2), all traced: a table of continuous noise levels
  (the row index as 't') runs through the same compiled sampler as the trained schedule."""
  ab_table, mu, std2 = params
  ab = ab_table[t].reshape(-1, 1, 1, 1)
  alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
  return sigma * (x_t - alpha * mu) / (alpha**2 * std2 + sigma**2)


def gaussian_params(ab_table=AB):
  return (jnp.asarray(ab_table, jnp.float32), jnp.asarray(MU, jnp.float32),
          jnp.asarray(STD**2, jnp.float32))


PARAMS = gaussian_params()
DETERMINISTIC = ("ddim", "dpmpp_2m", "heun")
# Module-level compiled samplers, shared by every test (one compile each).
COMPILED = {name: sampling.make_sampler(gaussian_apply, S, SHAPE, sampler=name,
                                        max_steps=MAX_STEPS)
            for name in DETERMINISTIC}
RNG = jax.random.key(0)
X_T = np.asarray(loop.initial_noise(RNG, SHAPE), np.float64)  # the loop's x_T


def ode_solution(x_T, sigma_first, sigma_last):
  """The closed form above: the ODE from sigma_first to sigma_last, then D at sigma_last."""
  s2 = STD**2
  x_edm = x_T * np.sqrt(1.0 + sigma_first**2)  # x_T / alpha_first
  return MU + s2 * (x_edm - MU) / np.sqrt((s2 + sigma_last**2) * (s2 + sigma_first**2))


def edm_sigma(ab):
  return np.sqrt((1.0 - ab) / ab)


def rms(a, b):
  return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


@functools.partial(jax.jit, static_argnames=("make",))
def trajectory(make, table, x_T):
  """Every intermediate x_t of a sampler (`make(model_fn)`) on the Gaussian: `[N, B, ...]`."""
  sampler = make(lambda x, t: gaussian_apply(PARAMS, x, t))

  def body(carry, xs):
    i, row = xs
    keys = jax.random.split(jax.random.key(0), x_T.shape[0])
    inputs = loop.StepInput(index=i, rng=keys, t=row.t, t_prev=row.t_prev,
                            alpha_bar=row.alpha_bar, alpha_bar_prev=row.alpha_bar_prev)
    carry = sampler.step(carry, inputs)
    return carry, sampler.final(carry)

  return jax.lax.scan(body, sampler.init(x_T), (jnp.arange(table.t.shape[0]), table))[1]


# ---------------------------------------------------------------------------------------------
# DPM-Solver++.

def test_dpmpp_first_order_update_is_ddim():
  """DPM-Solver++ eq. 10 is DDIM eq. 12 (eta = 0) at any pair of levels, including the last
  step to alpha-bar 1 (x0 itself), for outputs far from the data."""
  k0, k1 = jax.random.split(jax.random.key(1))
  t = jnp.arange(1, T, 7)
  t_prev = jnp.concatenate([t[:-1] - 1, jnp.array([-1])])  # one row lands on alpha-bar 1
  ab = jnp.asarray(AB[np.asarray(t)], jnp.float32).reshape(-1, 1, 1, 1)
  ab_prev = jnp.where(t_prev >= 0, S.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0)
  ab_prev = ab_prev.reshape(-1, 1, 1, 1)
  x = jax.random.normal(k0, (len(t), 3, 2, 1))
  eps = 3.0 * jax.random.normal(k1, x.shape)

  @jax.jit
  def both(x, eps):
    x0, _ = loop.denoise(eps, x, ab)
    dpm = dpm_solver.dpmpp_2m_update(x, x0, 100.0 * x0, ab, ab_prev, jnp.zeros(()), False)
    return dpm, ddim.generalized_step(eps, x, ab, ab_prev, jnp.zeros_like(x))

  dpm, ref = both(x, eps)
  scale = 1.0 + np.abs(np.asarray(x)) / np.sqrt(np.asarray(ab))  # the size of x0 in the sum
  np.testing.assert_array_less(np.abs(np.asarray(dpm) - np.asarray(ref)), 2e-6 * scale)


def test_dpmpp_order1_equals_ddim_step_by_step():
  ts = spacing.timesteps(T, 25, "karras", alphas_cumprod=AB)
  table = loop.make_table(S, ts)
  x_T = jnp.asarray(X_T, jnp.float32)
  ddim_path = trajectory(ddim.sampler, table, x_T)
  first_order = trajectory(functools.partial(dpm_solver.sampler, order=1), table, x_T)
  assert ddim_path.shape == (25,) + SHAPE
  scale = 1.0 + np.abs(np.asarray(ddim_path))
  np.testing.assert_array_less(np.abs(np.asarray(first_order - ddim_path)), 1e-5 * scale)
  # DPM-Solver++(2M): its first step is the same first-order step; later steps are not, and its
  # last step (to alpha-bar 1) returns the x0 estimate, as DDIM's does.
  second_order = np.asarray(trajectory(dpm_solver.dpmpp_2m, table, x_T))
  np.testing.assert_allclose(second_order[0], ddim_path[0], rtol=1e-5, atol=1e-6)
  assert np.abs(second_order[1:] - np.asarray(ddim_path[1:])).max() > 1e-2
  x_prev = jnp.asarray(second_order[-2])
  x0_last = np.asarray(loop.denoise(gaussian_apply(PARAMS, x_prev, jnp.full((B,), ts[-1])),
                                      x_prev, AB[ts[-1]])[0])
  np.testing.assert_allclose(second_order[-1], x0_last, rtol=1e-5, atol=1e-5)


def test_dpmpp_order_is_validated():
  with pytest.raises(ValueError, match="order"):
    dpm_solver.sampler(lambda x, t: x, order=3)


# ---------------------------------------------------------------------------------------------
# Convergence to the closed-form ODE solution.

# sampler -> (spacing, max RMS error at 200 steps); 2nd-order solvers reach ~2e-4, DDIM ~4e-3.
CONVERGENCE = {"ddim": ("linspace", 6e-3), "dpmpp_2m": ("karras", 4e-4),
               "heun": ("karras", 4e-4)}


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_converges_to_the_ode_solution_on_the_trained_schedule(name):
  spacing_name, tol = CONVERGENCE[name]
  errors, errors_to_zero = [], []
  for n in (10, 20, 50, 100, 200):
    ts = spacing.timesteps(T, n, spacing_name, alphas_cumprod=AB)
    x = COMPILED[name](PARAMS, RNG, num_steps=n, spacing=spacing_name)
    sigma_first, sigma_last = edm_sigma(AB[ts[0]]), edm_sigma(AB[ts[-1]])
    errors.append(rms(x, ode_solution(X_T, sigma_first, sigma_last)))
    errors_to_zero.append(rms(x, ode_solution(X_T, sigma_first, 0.0)))
  assert np.all(np.diff(errors) < 0), errors
  assert errors[-1] < tol, errors
  # Against the PF-ODE's x0 at sigma = 0 the error stops at the floor of denoising in one step
  # from the trained schedule's smallest level (sigma_0 = 0.0064), ~2e-4 here.
  assert errors_to_zero[-1] < tol + 2.5e-4, errors_to_zero
  if name != "ddim":  # second order: 20x the steps cut the error by far more than 20x
    assert errors[0] / errors[-1] > 200, errors


def continuous_table(num_steps, max_steps=MAX_STEPS, sigma_min=0.002, sigma_max=80.0):
  """A table of EDM's Karras levels themselves (no rounding to trained timesteps): row i is
  queried as 't' = i, and `gaussian_params(ab)` makes the model read its level from ab[i]."""
  sigma = spacing.karras_sigmas(sigma_min, sigma_max, num_steps)
  ab = np.ones(T)
  ab[:num_steps] = 1.0 / (1.0 + sigma**2)
  index = np.arange(max_steps)
  active = index < num_steps
  t = np.where(active, index, 0)
  t_prev = np.where(index + 1 < num_steps, index + 1, -1)
  table = loop.Table(t=jnp.asarray(t, jnp.int32), t_prev=jnp.asarray(t_prev, jnp.int32),
                       alpha_bar=jnp.asarray(ab[t], jnp.float32),
                       alpha_bar_prev=jnp.asarray(np.where(t_prev >= 0, ab[t_prev], 1.0),
                                                  jnp.float32),
                       active=jnp.asarray(active))
  return table, ab, sigma


@pytest.mark.parametrize("name,order", [("ddim", 1), ("dpmpp_2m", 2), ("heun", 2)])
def test_order_of_convergence_in_continuous_sigma(name, order):
  """Error ~ h^order: the slope of log error against log steps is -order. The model is queried at
  the exact continuous Karras sigma, so no rounding to the trained table blurs the rate."""
  steps = np.array([16, 32, 64, 128])
  errors = []
  for n in steps:
    table, ab, sigma = continuous_table(int(n))
    assert float(table.alpha_bar_prev[n - 1]) == 1.0 and not bool(table.active[n])
    x = COMPILED[name](gaussian_params(ab), RNG, table=table)
    errors.append(rms(x, ode_solution(X_T, sigma[0], sigma[-1])))
  slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
  assert -order - 0.3 < slope < -order + 0.2, (slope, errors)


# ---------------------------------------------------------------------------------------------
# Euler ancestral.

@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_euler_ancestral_step_is_ddim_with_the_same_eta(eta):
  k0, k1, k2 = jax.random.split(jax.random.key(2), 3)
  t = np.arange(3, T, 11)
  ab = jnp.asarray(AB[t], jnp.float32).reshape(-1, 1, 1, 1)
  ab_prev = jnp.asarray(np.where(t % 2, AB[t - 3], 1.0), jnp.float32).reshape(-1, 1, 1, 1)
  x = jax.random.normal(k0, (len(t), 3, 2, 1))
  out, noise = 2.0 * jax.random.normal(k1, x.shape), jax.random.normal(k2, x.shape)
  euler = jax.jit(euler_ancestral.euler_ancestral_step)(out, x, ab, ab_prev, noise, eta=eta)
  ref = jax.jit(ddim.generalized_step)(out, x, ab, ab_prev, noise, eta=eta)
  scale = 1.0 + np.abs(np.asarray(x)) / np.sqrt(np.asarray(ab))
  np.testing.assert_array_less(np.abs(np.asarray(euler) - np.asarray(ref)), 3e-6 * scale)


N_LAW = 8192
EULER_A = sampling.make_sampler(gaussian_apply, S, (N_LAW, 2, 2, 1), sampler="euler_ancestral",
                                max_steps=T)


def ddpm_chain_law(ts):
  """Exact mean/variance of DDPM's respaced chain (= Euler ancestral, eta = 1) on the Gaussian,
  float64: each step is x' = a x + b + c z."""
  m, v = np.zeros_like(MU), np.ones_like(MU)
  for i, t in enumerate(ts):
    a_t, a_p = AB[t], (AB[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    alpha, sigma = np.sqrt(a_t), np.sqrt(1 - a_t)
    k = sigma / (alpha**2 * STD**2 + sigma**2)
    x0_a, x0_b = (1 - sigma * k) / alpha, sigma * k * MU
    beta = 1 - a_t / a_p
    c1, c2 = np.sqrt(a_p) * beta / (1 - a_t), np.sqrt(1 - beta) * (1 - a_p) / (1 - a_t)
    m = (c1 * x0_a + c2) * m + c1 * x0_b
    v = (c1 * x0_a + c2) ** 2 * v + beta * (1 - a_p) / (1 - a_t)
  return m, v


def test_euler_ancestral_follows_its_chain_and_recovers_the_data_law():
  ts = spacing.timesteps(T, 50, "karras", alphas_cumprod=AB)
  m, v = ddpm_chain_law(ts)
  assert_law(EULER_A(PARAMS, jax.random.key(3), num_steps=50, spacing="karras"), m, v)
  # With all T steps the chain's law is the data law (up to 5% on the narrowest pixel, whose
  # std 0.05 is ~8 times the last step's noise level), and the samples show it.
  m, v = ddpm_chain_law(np.arange(T)[::-1])
  np.testing.assert_allclose(m, MU, atol=1e-3)
  np.testing.assert_allclose(np.sqrt(v), STD, rtol=0.05)
  x = np.asarray(EULER_A(PARAMS, jax.random.key(4), num_steps=T), np.float64)
  assert_law(x, m, v)
  np.testing.assert_array_less(np.abs(x.mean(0) - MU), 5 * STD / np.sqrt(N_LAW) + 1e-3)
  np.testing.assert_array_less(np.abs(x.std(0) / STD - 1), 0.045 + 5 / np.sqrt(2 * N_LAW))
  # eta = 0 (a traced knob, same program) is the deterministic Euler method = DDIM, eta = 0: the
  # noise key no longer matters, only x_T, and the 20-step error is DDIM's (4e-2 RMS).
  euler = np.asarray(EULER_A(PARAMS, jax.random.key(3), num_steps=20, eta=0.0), np.float64)
  x_T = np.asarray(loop.initial_noise(jax.random.key(3), (N_LAW, 2, 2, 1)))
  ts = spacing.timesteps(T, 20)
  assert rms(euler, ode_solution(x_T, edm_sigma(AB[ts[0]]), edm_sigma(AB[ts[-1]]))) < 0.05


# ---------------------------------------------------------------------------------------------
# Karras spacing, predictions, compile once.

def test_karras_spacing_maps_edm_sigmas_to_trained_timesteps():
  for schedule in (S, schedules.linear(T)):
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    table_sigma = edm_sigma(ab)
    # Log-sigma interpolation is exact at the table's own levels and monotone in between.
    np.testing.assert_allclose(spacing.sigma_to_timestep(table_sigma, ab), np.arange(T),
                               atol=1e-6)
    for n in (2, 10, 50):
      ts = spacing.timesteps(T, n, "karras", alphas_cumprod=ab)
      levels = spacing.karras_sigmas(table_sigma[0], min(table_sigma[-1], 80.0), n)
      assert ts[-1] == 0 and np.all(np.diff(ts) < 0)
      # Each timestep's trained sigma brackets the Karras level to within one training step.
      t = spacing.sigma_to_timestep(levels, ab)
      np.testing.assert_array_less(np.abs(ts - t), 0.5 + 1e-9)
  # rho = 7 spacing (EDM eq. 5) itself.
  sig = spacing.karras_sigmas(0.002, 80.0, 5)
  ramp = np.linspace(0, 1, 5)
  np.testing.assert_allclose(sig, (80**(1 / 7) + ramp * (0.002**(1 / 7) - 80**(1 / 7)))**7)
  with pytest.raises(ValueError, match="alphas_cumprod"):
    spacing.timesteps(T, 10, "karras")


@pytest.mark.parametrize("name,prediction", [("dpmpp_2m", "x0"), ("heun", "v")])
def test_predictions_give_the_same_samples(name, prediction):
  def apply_fn(params, x_t, t):
    eps = gaussian_apply(params, x_t, t)
    ab = params[0][t].reshape(-1, 1, 1, 1)
    alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1 - ab)
    x0 = (x_t - sigma * eps) / alpha
    return x0 if prediction == "x0" else alpha * eps - sigma * x0

  other = sampling.make_sampler(apply_fn, S, SHAPE, sampler=name, max_steps=MAX_STEPS,
                                prediction=prediction)
  np.testing.assert_allclose(other(PARAMS, RNG, num_steps=20, spacing="karras"),
                             COMPILED[name](PARAMS, RNG, num_steps=20, spacing="karras"),
                             rtol=1e-3, atol=1e-3)


def test_steps_eta_table_and_params_are_traced():
  traces = []

  def apply_fn(params, x_t, t):
    traces.append(x_t.shape)  # runs only while tracing
    return gaussian_apply(params, x_t, t)

  fn = sampling.make_sampler(apply_fn, S, (8, 2, 2, 1), sampler="euler_ancestral",
                             max_steps=30, spacing="karras")
  with CompileCounter() as first:
    a = fn(PARAMS, RNG, num_steps=30)
  assert "jit(run)" in first.names and len(traces) == 1, first.names
  table, ab, _ = continuous_table(10, max_steps=30)
  new_params, table_params = gaussian_params(AB * 0.999), gaussian_params(ab)
  with CompileCounter() as later:  # nothing at all compiles, not even a host-side helper op
    b = fn(PARAMS, RNG, num_steps=7)
    c = fn(PARAMS, RNG, num_steps=7, eta=0.3)
    d = fn(PARAMS, RNG, num_steps=12, spacing="trailing")
    e = fn(PARAMS, jax.random.key(9), timesteps=np.array([900, 500, 20, 3]))
    fn(new_params, RNG, num_steps=30)  # new parameter values
    f = fn(table_params, RNG, table=table)  # an explicit table of continuous levels
  assert later.names == [] and len(traces) == 1, later.names
  results = [np.asarray(r) for r in (a, b, c, d, e, f)]
  for i in range(len(results)):  # each setting really changed the samples
    for j in range(i):
      assert np.abs(results[i] - results[j]).max() > 1e-3
  with pytest.raises(ValueError, match="max_steps"):
    fn(PARAMS, RNG, num_steps=31)


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampler="dpm"), "dpmpp_2m"),
    (dict(spacing="cubic"), "karras"),
    (dict(max_steps=T + 1), "max_steps"),
    (dict(max_steps=0), "max_steps"),
    (dict(prediction="score"), "prediction"),
    (dict(threshold=1.5), "threshold"),
    (dict(null_cond={}), "null_cond"),
    (dict(null_cond={"colour": 0}), "unknown key"),
    (dict(shape=(0, 2)), "shape"),
])
def test_make_sampler_validates_up_front(kwargs, match):
  args = dict(shape=SHAPE)
  args.update(kwargs)
  shape = args.pop("shape")
  with pytest.raises(ValueError, match=match):
    sampling.make_sampler(gaussian_apply, S, shape, **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(timesteps=np.array([5, 9])), "decreasing"),
    (dict(timesteps=np.arange(MAX_STEPS + 1)[::-1]), "max_steps"),
    (dict(eta=-0.1), "eta"),
    (dict(guidance_scale=2.0), "null_cond"),
    (dict(mask=np.ones(SHAPE, bool)), "x_known"),
    (dict(strength=0.5), "init_image"),
    (dict(init_image=np.zeros(SHAPE), strength=0.0), "strength"),
    (dict(init_image=np.zeros((3, 3))), "init_image"),
    (dict(x_known=np.zeros(SHAPE), mask=np.ones((3, 3), bool)), "mask"),
    (dict(cond={"label": np.zeros(B, np.int32)}), None),  # a cond without guidance: the model's
    (dict(x_known=np.zeros(SHAPE), mask=np.ones(SHAPE, bool), resample=0), "resample"),
    (dict(spacing="cubic"), "spacing"),
])
def test_knobs_validate_up_front(kwargs, match):
  if match is None:
    COMPILED["ddim"].knobs(**kwargs)
    return
  with pytest.raises(ValueError, match=match):
    COMPILED["ddim"].knobs(**kwargs)


def test_sample_runs_the_new_samplers():
  """The one-call `sample()` API reaches every sampler and spacing."""
  model_fn = functools.partial(gaussian_apply, PARAMS)
  x = sampling.sample(jax.tree_util.Partial(model_fn), S, SHAPE, RNG, sampler="heun",
                      num_steps=20, spacing="karras")
  np.testing.assert_allclose(x, COMPILED["heun"](PARAMS, RNG, num_steps=20, spacing="karras"),
                             rtol=1e-6, atol=1e-6)
