r"""Evaluates a trained run: a sweep of samplers x steps, scored beside the real-vs-real floor.

  python scripts/evaluate.py --workdir=workdirs/digits

Draws --num_samples images from the newest checkpoint's EMA params with every sampler of
--samplers at every number of --steps (one compile per sampler), and scores them in the feature
space of the run's feature classifier (trained into <workdir>/eval/classifier first if there is
none; configs/classifier.py) or, with --inception_weights=pt_inception-2015-12-05-6726825d.pth
(pytorch-fid's file), of the FID Inception. With --ideal (default), the same sweep runs on the
ideal denoiser of the training split, which has no network error (--network=false leaves the
run's network out). Writes <workdir>/eval/sweep.jsonl and sweep.md (--table names them) and
prints the table; --bits_per_dim=N adds the variational bound on N held-out images (-1: all)
to <workdir>/eval/bits_per_dim.json.

A bad flag or workdir is one line on stderr and exit status 1 (--debug shows the traceback).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from configs import classifier as classifier_config
from configs import common
from diffax import sampling
from diffax.pipeline import checkpoint
from diffax.pipeline import cli
from diffax.pipeline import compilation_cache
from diffax.pipeline import evaluate
from diffax.pipeline import latent
from diffax.pipeline import likelihood
from diffax.pipeline import parallel
from diffax.pipeline import sweep
from diffax.pipeline import tasks
from diffax.pipeline.workdir import Workdir

_WORKDIR = flags.DEFINE_string("workdir", None, "A directory written by scripts/train.py.")
_SAMPLERS = flags.DEFINE_list(
    "samplers", [f"{s}:{p}" for s, p in sweep.DEFAULT_SAMPLERS],
    f"sampler:spacing pairs (samplers {sorted(sampling.SAMPLERS)}, spacings "
    f"{sorted(sampling.SPACINGS)}).")
_STEPS = flags.DEFINE_list("steps", [str(n) for n in sweep.DEFAULT_STEPS],
                           "Numbers of sampler steps, each run by every sampler.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Images per row (default: "
                                    "config.eval.num_samples).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Images per sampler call (default: "
                                   "config.eval.batch_size).")
_NETWORK = flags.DEFINE_bool("network", True, "Sweep the run's network (its EMA params).")
_IDEAL = flags.DEFINE_bool("ideal", None, "Sweep the ideal denoiser of the training split (no "
                           "network error), beside uniform draws of training images (default: "
                           "on for pixel runs; latent runs have no ideal denoiser).")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "pytorch-fid's weights file "
                                 "(pt_inception-2015-12-05-6726825d.pth, or its converted .npz):"
                                 " FID/KID with Inception features instead of the classifier's.")
_CLASSIFIER = flags.DEFINE_string("classifier_workdir", None, "The feature classifier's run "
                                  "directory (default: the run's config.eval setting, "
                                  "<workdir>/eval/classifier).")
_BPD = flags.DEFINE_integer("bits_per_dim", 0, "Held-out images to compute bits per dimension "
                            "on (T model evaluations each); -1: all; 0: skip.")
_SEED = flags.DEFINE_integer("seed", 0, "Sample i depends on the seed and i alone.")
_TABLE = flags.DEFINE_string("table", "sweep", "The table's name: <workdir>/eval/<table>.jsonl "
                             "and .md.")
flags.mark_flag_as_required("workdir")


def parse_samplers(values) -> list[tuple[str, str]]:
  pairs = []
  for value in values:
    name, _, spacing = value.partition(":")
    if name not in sampling.SAMPLERS:
      raise ValueError(f"--samplers: unknown sampler {name!r}; choose from "
                       f"{sorted(sampling.SAMPLERS)}")
    spacing = spacing or "linspace"
    if spacing not in sampling.SPACINGS:
      raise ValueError(f"--samplers: unknown spacing {spacing!r} in {value!r}; choose from "
                       f"{sorted(sampling.SPACINGS)}")
    pairs.append((name, spacing))
  return pairs


def parse_steps(values, num_train_steps: int) -> list[int]:
  try:
    steps = [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--steps must be integers, got {values}") from None
  if not steps or min(steps) < 1 or max(steps) > num_train_steps:
    raise ValueError(f"--steps must lie in [1, {num_train_steps}] (the run's "
                     f"config.diffusion.num_steps), got {steps}")
  return sorted(set(steps))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  workdir = Workdir(_WORKDIR.value)
  config = workdir.load_config(defaults=common.base_config())
  is_latent = latent.enabled(config)
  ideal = not is_latent if _IDEAL.value is None else _IDEAL.value
  if ideal and is_latent:
    raise ValueError(f"--ideal: the ideal denoiser is of pixel data and {workdir} is a latent "
                     f"run (config.latent.autoencoder_workdir); leave out --ideal")
  sweeping = _NETWORK.value or ideal
  if not (sweeping or _BPD.value):
    raise ValueError("--network=false --ideal=false and no --bits_per_dim: nothing to do")
  parse_samplers(_SAMPLERS.value)  # bad flags fail before anything loads
  parse_steps(_STEPS.value, config.diffusion.num_steps)
  if checkpoint.latest_step_in(workdir.checkpoints) is None:
    raise FileNotFoundError(f"no checkpoint in {workdir.checkpoints}: train first, or check "
                            f"--workdir")
  with config.unlocked():
    e = config.eval
    if e.classifier is None:  # a run saved without the recipe: this data set's classifier
      e.classifier = classifier_config.for_data(config.data)
    if _CLASSIFIER.value:
      e.classifier_workdir = _CLASSIFIER.value
    if _INCEPTION.value:
      e.features, e.inception_weights = "inception", _INCEPTION.value
    if _NUM_SAMPLES.value is not None:
      e.num_samples = _NUM_SAMPLES.value
    if _BATCH_SIZE.value is not None:
      e.batch_size = _BATCH_SIZE.value
    e.metrics = tuple(m for m in e.metrics if m != "classes" or config.data.num_classes > 1)
  evaluate.check_config(
      config, tasks.diffusion.build_model(config, latent.latent_shape(config)) if is_latent
      else None)
  compilation_cache.enable()
  parallel.initialize_distributed()
  mesh = parallel.create_mesh()
  if sweeping:
    run_sweep(workdir, config, mesh, ideal=ideal)
  if _BPD.value:
    result = likelihood.bits_per_dim(workdir, config, mesh,
                                     num_images=None if _BPD.value < 0 else _BPD.value,
                                     batch_size=config.eval.batch_size, seed=_SEED.value)
    print(f"bits/dim {result['bits_per_dim']:.3f} +- {result['standard_error'] or 0:.3f} "
          f"on {result['num_images']} images of split {result['split']!r} (prior "
          f"{result['prior']:.4f}, diffusion {result['diffusion']:.3f}, decoder "
          f"{result['decoder']:.3f}); wrote {workdir.eval_file('bits_per_dim.json')}")


def run_sweep(workdir, config, mesh, *, ideal: bool):
  """The sweep of the flags' samplers x steps; prints and writes its table."""
  samplers = parse_samplers(_SAMPLERS.value)
  steps = parse_steps(_STEPS.value, config.diffusion.num_steps)
  judge = evaluate.Judge.create(config, workdir, mesh)
  rows = sweep.sweep(workdir, config, mesh, judge=judge, samplers=samplers, steps=steps,
                     num_samples=config.eval.num_samples, batch_size=config.eval.batch_size,
                     network=_NETWORK.value, ideal=ideal, seed=_SEED.value)
  notes = [f"{config.eval.num_samples} samples per row (seed {_SEED.value}), checkpoint step "
           f"{rows[-1]['checkpoint_step']}, compared with the split "
           f"{config.eval.reference_split!r}. The first row is the real-vs-real floor: "
           f"{judge.floor['num_samples']} held-out images (split "
           f"{config.eval.heldout_split!r})."]
  if ideal:
    notes.append("'real (training draws)' is uniform draws of reference images: what a "
                 "perfect sampler of the ideal denoiser gives.")
  warning = rows[-1].get("warning")
  if warning:
    notes.append(f"Warning: {warning}.")
  jsonl, md = sweep.write_table(workdir, rows, name=_TABLE.value, notes="\n".join(notes),
                                features=judge.distance_net.name)
  print(sweep.markdown(rows, features=judge.distance_net.name) + "\n" + "\n".join(notes))
  print(f"wrote {jsonl} and {md}")


if __name__ == "__main__":
  cli.run(main)
