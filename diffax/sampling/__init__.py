"""Samplers: pure reverse steps run by one jitted `lax.scan` (see `loop`).

  x0 = diffax.sampling.sample(model_fn, schedule, (16, 32, 32, 3), jax.random.key(0),
                              sampler="ddim", num_steps=50)

`model_fn(x_t, t) -> model output` is any jittable callable; t is `i32[B]` in the training
schedule's index. A plain function is a static argument of the compiled sampler (compiled once per
function object, with any arrays it closes over baked in as constants). To keep parameters traced,
so new parameters reuse the compiled sampler, pass a `jax.tree_util.Partial`:

  model_fn = jax.tree_util.Partial(apply_fn, params)   # called as apply_fn(params, x_t, t)

To change the number of steps, eta, the guidance scale, the condition or the table, or to
inpaint / edit, without recompiling, compile once with `make_sampler` (see `compiled`):

  sample_fn = diffax.sampling.make_sampler(model.apply_fn, schedule, (16, 8, 8, 1),
                                           sampler="heun", max_steps=50, spacing="karras",
                                           null_cond=model.null_cond)
  x0 = sample_fn(params, rng, num_steps=18, cond={"label": labels}, guidance_scale=3.0)

The modules: `loop` (the scan, the `Sampler` contract, per-example randomness), `compiled`
(`make_sampler`, `sample`), one module per sampler, `spacing` (timestep tables), `guidance`
(classifier-free guidance over the conditioning pytree), `editing` (inpainting, SDEdit),
`thresholding`.

Samplers (`SAMPLERS`): "ddpm" (Ho et al. 2020), "ddim" (Song et al. 2021), "dpmpp_2m"
(DPM-Solver++(2M), Lu et al. 2022), "heun" (EDM's 2nd-order Heun, Karras et al. 2022),
"euler_ancestral" (k-diffusion). Spacings (`SPACINGS`): "linspace", "leading", "trailing",
"quadratic", "karras". See docs/samplers.md for their accuracy.
"""

from diffax.sampling import compiled
from diffax.sampling import ddim
from diffax.sampling import ddpm
from diffax.sampling import dpm_solver
from diffax.sampling import editing
from diffax.sampling import euler_ancestral
from diffax.sampling import guidance
from diffax.sampling import heun
from diffax.sampling import loop
from diffax.sampling import spacing
from diffax.sampling import thresholding
from diffax.sampling.compiled import (DEFAULT_ETA, SAMPLERS, CompiledSampler, Knobs, Spec,
                                      make_sampler, sample)
from diffax.sampling.ddim import ddim_step
from diffax.sampling.ddpm import ddpm_step
from diffax.sampling.loop import Sampler, StepInput, Table
from diffax.sampling.spacing import SPACINGS, timesteps
from diffax.sampling.thresholding import dynamic_threshold

__all__ = ["CompiledSampler", "DEFAULT_ETA", "Knobs", "SAMPLERS", "SPACINGS", "Sampler", "Spec",
           "StepInput", "Table", "compiled", "ddim", "ddim_step", "ddpm", "ddpm_step",
           "dpm_solver", "dynamic_threshold", "editing", "euler_ancestral", "guidance", "heun",
           "loop", "make_sampler", "sample", "spacing", "thresholding", "timesteps"]
