r"""Sampler accuracy against closed-form answers, as markdown tables for docs/samplers.md.

The data law is Gaussian, N(MU, STD^2) independently per pixel of a 2x2 image (the law of the
tests: one narrow pixel, std 0.05, and three wider ones), so the exact noise predictor is known
and the library's samplers run on it exactly as on a trained model. Two errors:

* ODE error (deterministic samplers): the probability-flow ODE from the table's first level
  sigma_T to sigma = 0 has the closed-form solution (EDM coordinates, sigma = sqrt((1-ab)/ab))
    x0* = MU + STD (x_T / alpha_T - MU) / sqrt(STD^2 + sigma_T^2);
  the table gives the RMS of x0 - x0* over samples and pixels. It includes the floor of the final
  denoising step from the table's smallest level (sigma_0 = 0.0064 for the cosine schedule).
* Law error (every sampler): the per-pixel Wasserstein-2 distance between the samples' law and
  N(MU, STD^2), sqrt((mean - MU)^2 + (std - STD)^2), RMS over pixels, from 65,536 samples
  (sampling error ~2e-3).

  python benchmarks/sampler_accuracy.py [--schedule cosine] [--num_train_steps 1000]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np

from diffax import sampling
from diffax import schedules

MU = np.array([0.5, -1.0, 0.0, 2.0]).reshape(2, 2, 1)
STD = np.array([0.05, 0.5, 1.0, 0.3]).reshape(2, 2, 1)
STEPS = (10, 20, 50)
DETERMINISTIC = ("ddim", "dpmpp_2m", "heun")
STOCHASTIC = ("ddpm", "euler_ancestral")


def gaussian_apply(params, x_t, t):
  """The exact E[eps | x_t] for x0 ~ N(mu, std^2); params = (alpha-bars, mu, std^2)."""
  ab_table, mu, std2 = params
  ab = ab_table[t].reshape(-1, 1, 1, 1)
  alpha, sigma = jnp.sqrt(ab), jnp.sqrt(1.0 - ab)
  return sigma * (x_t - alpha * mu) / (alpha**2 * std2 + sigma**2)


def nfe(name, n):
  return 2 * n - 1 if name == "heun" else n


def ode_errors(schedule, batch=4096):
  """{(sampler, spacing): [RMS error to the PF-ODE's x0 at each of STEPS]}."""
  ab = np.asarray(schedule.alphas_cumprod, np.float64)
  params = (schedule.alphas_cumprod, jnp.asarray(MU, jnp.float32), jnp.asarray(STD**2,
                                                                              jnp.float32))
  rng = jax.random.key(0)
  x_T = np.asarray(jax.random.normal(jax.random.split(rng)[0], (batch, 2, 2, 1)), np.float64)
  out = {}
  for name in DETERMINISTIC:
    fn = sampling.make_sampler(gaussian_apply, schedule, (batch, 2, 2, 1), sampler=name,
                               max_steps=max(STEPS))
    for spacing_name in sampling.SPACINGS:
      errors = []
      for n in STEPS:
        ts = sampling.timesteps(schedule.num_steps, n, spacing_name, alphas_cumprod=ab)
        x = np.asarray(fn(params, rng, num_steps=n, spacing=spacing_name), np.float64)
        sigma_T2 = (1 - ab[ts[0]]) / ab[ts[0]]
        x0 = MU + STD * (x_T * np.sqrt(1 + sigma_T2) - MU) / np.sqrt(STD**2 + sigma_T2)
        errors.append(float(np.sqrt(np.mean((x - x0) ** 2))))
      out[(name, spacing_name)] = errors
  return out


def law_errors(schedule, spacings=tuple(sampling.SPACINGS), batch=65536):
  """{(sampler, spacing): [W2 to N(MU, STD^2), RMS over pixels, at each of STEPS]}."""
  params = (schedule.alphas_cumprod, jnp.asarray(MU, jnp.float32), jnp.asarray(STD**2,
                                                                              jnp.float32))
  out = {}
  for name in DETERMINISTIC + STOCHASTIC:
    fn = sampling.make_sampler(gaussian_apply, schedule, (batch, 2, 2, 1), sampler=name,
                               max_steps=max(STEPS))
    for spacing_name in spacings:
      errors = []
      for n in STEPS:
        x = np.asarray(fn(params, jax.random.key(1), num_steps=n, spacing=spacing_name),
                       np.float64)
        w2 = np.sqrt((x.mean(0) - MU) ** 2 + (x.std(0) - STD) ** 2)
        errors.append(float(np.sqrt(np.mean(w2**2))))
      out[(name, spacing_name)] = errors
  return out


def markdown(errors, title):
  lines = [f"| sampler | spacing | {title} at " + " / ".join(map(str, STEPS)) + " steps | "
           "model calls |", "|---|---|---|---|"]
  for (name, spacing_name), values in errors.items():
    lines.append(f"| {name} | {spacing_name} | " + " / ".join(f"{v:.1e}" for v in values)
                 + " | " + " / ".join(str(nfe(name, n)) for n in STEPS) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--schedule", default="cosine", choices=sorted(schedules.SCHEDULES))
  parser.add_argument("--num_train_steps", type=int, default=1000)
  args = parser.parse_args()
  schedule = schedules.SCHEDULES[args.schedule](args.num_train_steps)
  print(f"Schedule: {args.schedule}, T = {args.num_train_steps}; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}.\n")
  print("ODE error (RMS of x0 - x0*, deterministic samplers):\n")
  print(markdown(ode_errors(schedule), "RMS error"))
  print("\nLaw error (W2 to the data law, RMS over pixels):\n")
  print(markdown(law_errors(schedule), "W2"))


if __name__ == "__main__":
  main()
