"""How good are a run's samples: metrics during training, sampler sweeps, bits per dimension.

Every number is reported beside its real-vs-real floor: the same metric of the held-out split
(`config.eval.heldout_split`, real images the model never saw) against the reference split
(`config.eval.reference_split`, what the model trained on). A sample metric near its floor is
as good as the metric can tell.

Metrics (`config.eval.metrics`), in the feature space of `config.eval.features` (`features`):
  fd       Frechet distance of the features to the reference's (FID with Inception features);
           biased upward at few samples, so the floor's sample count is stated with it
  kid      kernel distance (KID): unbiased, so it compares across sample counts
  classes  from the feature classifier's predictions: `coverage`, the effective number of
           predicted classes (exp of the entropy of their histogram) over the number of
           classes (1: every class equally often), and for class-conditional models
           `accuracy`, the share of samples classified as the class they were drawn for
Sweeps add `nearest`: the mean RMS per-pixel distance of a sample to its nearest reference image
(0 for a copy of a training image), and `memorized`, the share within half an 8-bit level.

Samples are drawn by `sample.Request` (sample i depends on the seed and i alone, whatever the
batch size or device count), each process generating its devices' share of every batch, then
rounded to the 8 bits a PNG holds. Features are computed the same way, gathered, and every
process accumulates the same float64 statistics in sample order, so the numbers are those of a
single process.
"""

import dataclasses
import json
import os
import time
from typing import Optional

import jax
import numpy as np

from diffax import evaluation
from diffax import models
from diffax import sampling
from diffax.evaluation import distances
from diffax.evaluation import ideal_denoiser
from diffax.pipeline import build
from diffax.pipeline import checks
from diffax.pipeline import features as features_lib
from diffax.pipeline import images as images_lib
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir

METRICS = ("fd", "kid", "classes")
# Below this many samples the covariance of Inception's 2048-d features is singular and FID
# unstable (and not comparable with published numbers, which use 50,000).
INCEPTION_MIN_SAMPLES = 2048


def model_calls(sampler: str, num_steps: int) -> int:
  """Model evaluations of a sampler run (guidance batches both halves into one call)."""
  return 2 * num_steps - 1 if sampler == "heun" else num_steps


def sampling_config(config, *, sampler: Optional[str] = None, num_steps: Optional[int] = None,
                    spacing: Optional[str] = None):
  """A copy of `config` whose `sample` section draws the evaluation's images: `config.eval`'s
  sampler, steps and spacing (or the arguments'), labels i % num_classes."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.sample.sampler = sampler or config.eval.sampler
    c.sample.num_steps = num_steps or config.eval.num_steps
    c.sample.spacing = spacing or config.eval.spacing
    c.sample.class_label = -1
  return c


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"config.eval.{name} must be an int >= {minimum}, got {value!r}")


def check_config(config, net: Optional[models.Model] = None) -> None:
  """The values of `config.eval` and the evaluation's sampler (of `net`, default
  `build.model(config)`), before anything runs.

  Raises:
    ValueError: naming the field and the allowed values.
    FileNotFoundError: Inception features without their weights file (the message says where
      to get it).
  """
  e = config.eval
  _check_int("every", e.every, 0)
  _check_int("num_samples", e.num_samples, 2)
  _check_int("batch_size", e.batch_size, 1)
  unknown = [m for m in e.metrics if m not in METRICS]
  if unknown:
    raise ValueError(f"config.eval.metrics has unknown {unknown}; choose from {list(METRICS)}")
  if e.features not in features_lib.FEATURES:
    raise ValueError(f"config.eval.features={e.features!r} is unknown; choose one of "
                     f"{list(features_lib.FEATURES)}")
  if "classes" in e.metrics and config.data.num_classes < 2:
    raise ValueError(f"config.eval.metrics 'classes' needs a labelled dataset "
                     f"(config.data.num_classes={config.data.num_classes}); drop it")
  if e.features == "inception" and ("fd" in e.metrics or "kid" in e.metrics):
    path = e.inception_weights
    if not path or not os.path.exists(os.path.expanduser(path)):
      raise FileNotFoundError(
          (f"config.eval.inception_weights={path}: no such file. " if path else "")
          + features_lib.missing_weights_message())
  if e.sampler not in sampling.SAMPLERS:
    raise ValueError(f"config.eval.sampler={e.sampler!r} is unknown; choose one of "
                     f"{sorted(sampling.SAMPLERS)}")
  if e.spacing not in sampling.SPACINGS:
    raise ValueError(f"config.eval.spacing={e.spacing!r} is unknown; choose one of "
                     f"{sorted(sampling.SPACINGS)}")
  if not 1 <= e.num_steps <= config.diffusion.num_steps:
    raise ValueError(f"config.eval.num_steps={e.num_steps} must lie in [1, "
                     f"{config.diffusion.num_steps}] (config.diffusion.num_steps)")
  c = sampling_config(config)
  checks.check_sampling(c)
  build.sampler(c, net or build.model(c), build.schedule(c), batch_size=e.batch_size)


def quantize(images: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] rounded to the 256 levels of 8-bit data (what a PNG of them holds)."""
  return images_lib.to_uint8(images).astype(np.float32) / 127.5 - 1.0


def coverage(logits: np.ndarray) -> float:
  """exp(entropy of the predicted-class histogram) / number of classes, in (0, 1]."""
  counts = np.bincount(np.argmax(logits, axis=-1), minlength=logits.shape[-1])
  p = counts[counts > 0] / counts.sum()
  return float(np.exp(-(p * np.log(p)).sum()) / logits.shape[-1])


@dataclasses.dataclass
class Judge:
  """Scores sets of images against the reference split, and knows the floor.

  Attributes:
    metrics: what to compute (`METRICS`).
    distance_net: the feature network of fd / kid.
    class_net: the classifier of "classes" (None without).
    reference: `distance_net`'s features of the reference split.
    reference_images: the reference split's images (for `nearest`).
    floor: the metrics of the held-out split (`heldout` rows), with `num_samples`.
  """
  metrics: tuple
  distance_net: features_lib.FeatureNet
  class_net: Optional[features_lib.FeatureNet]
  reference: features_lib.Reference
  reference_images: np.ndarray
  reference_labels: np.ndarray
  floor: dict = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, config, workdir: Workdir, mesh):
    """Builds the feature networks of `config.eval` (training the classifier first if it
    must), reads the reference and held-out splits and computes (or reads from cache) their
    features."""
    e = config.eval
    metrics = tuple(e.metrics)
    use_inception = e.features == "inception"
    classifier = None
    if "classes" in metrics or not use_inception:
      classifier = features_lib.classifier_net(config, workdir, mesh)
    if use_inception:
      distance_net = features_lib.inception_net(e.inception_weights, mesh)
    else:
      distance_net = classifier
    real = features_lib.real_data(config, e.reference_split)
    cache_dir = (features_lib.classifier_dir(config, workdir) if distance_net is classifier
                 else workdir)
    reference = features_lib.reference(
        distance_net, real, cache_dir.eval_file(f"reference_{distance_net.name}_"
                                                f"{config.data.dataset}_{real.split}.npz"))
    judge = cls(metrics=metrics, distance_net=distance_net,
                class_net=classifier if "classes" in metrics else None, reference=reference,
                reference_images=real.images, reference_labels=real.labels)
    heldout = features_lib.real_data(config, e.heldout_split)
    # The floor's accuracy is the classifier's on real images: beside conditional samples only.
    conditional = config.model.get("num_classes", 0) > 0
    judge.floor = judge(heldout.images, heldout.labels if conditional else None, nearest=True)
    return judge

  def __call__(self, images: np.ndarray, labels: Optional[np.ndarray] = None, *,
               nearest: bool = False) -> dict:
    """The metrics of `images` (`[N, H, W, C]` in [-1, 1]); `labels`: the classes they were
    drawn for (accuracy), if any."""
    evaluation.inception.check_images(images)
    out = {"num_samples": len(images)}
    feats, logits = self.distance_net(images)
    if "fd" in self.metrics:
      out["fd"] = distances.frechet_distance(distances.FeatureStats.of(feats),
                                             self.reference.stats)
    if "kid" in self.metrics:
      out["kid"] = distances.kernel_distance(feats, self.reference.features)
    if self.class_net is not None:
      if self.class_net is not self.distance_net:
        _, logits = self.class_net(images)
      out["coverage"] = coverage(logits)
      if labels is not None:
        out["accuracy"] = float(np.mean(np.argmax(logits, -1) == np.asarray(labels)))
    if nearest:
      distance = ideal_denoiser.nearest_distance(images, self.reference_images)
      out["nearest"] = float(distance.mean())
      out["memorized"] = ideal_denoiser.memorized_fraction(distance)
    if len(images) < self.distance_net.dim and ("fd" in self.metrics):
      out["warning"] = few_samples_warning(len(images), self.distance_net)
    return out


def few_samples_warning(num_samples: int, net: features_lib.FeatureNet) -> str:
  need = INCEPTION_MIN_SAMPLES if net.name == "inception" else net.dim
  return (f"only {num_samples} samples for {net.dim}-d {net.name} features (fewer than "
          f"{need}): the covariance is singular and FD unstable; use more samples "
          f"(config.eval.num_samples / --num_samples)")


def summary(metrics: dict, floor: dict) -> str:
  """One line: each metric with its floor."""
  parts = []
  for key, fmt in (("fd", ".3g"), ("kid", ".2e"), ("coverage", ".3f"), ("accuracy", ".3f"),
                   ("nearest", ".3f")):
    if key in metrics:
      parts.append(f"{key} {metrics[key]:{fmt}} (real {floor[key]:{fmt}})" if key in floor
                   else f"{key} {metrics[key]:{fmt}}")
  return ", ".join(parts)


class TrainingEvaluator:
  """`evaluator(step, ema_params) -> scalars`: samples of `config.eval` scored by a `Judge`.

  Each call draws `config.eval.num_samples` images from the same seed (so successive numbers
  differ by the model alone), appends the full record to `DIR/eval/training.jsonl` (process 0)
  and returns the scalars for metrics.jsonl and TensorBoard: `eval/<metric>` and
  `eval/<metric>_floor`.
  """

  def __init__(self, config, workdir: Workdir, mesh, net: models.Model, noise_schedule, *,
               latent_space=None):
    e = config.eval
    self.config, self.workdir = config, workdir
    c = sampling_config(config)
    self.request = sample_lib.request(c, net, noise_schedule, num_images=e.num_samples,
                                      batch_size=e.batch_size, mesh=mesh,
                                      latent_space=latent_space)
    self.labels = self.request.per_image.get("cond", {}).get("label")
    self.judge = Judge.create(config, workdir, mesh)
    self.rng = jax.random.key(e.seed)
    if "fd" in e.metrics and e.num_samples < self.judge.distance_net.dim:
      report("warning: " + few_samples_warning(e.num_samples, self.judge.distance_net))

  def __call__(self, step: int, params) -> dict:
    e = self.config.eval
    start = time.perf_counter()
    samples = quantize(self.request(params, self.rng))
    metrics = self.judge(samples, self.labels)
    floor = self.judge.floor
    record = {"step": int(step), "sampler": e.sampler, "num_steps": e.num_steps,
              "spacing": e.spacing, "features": self.judge.distance_net.name, **metrics,
              "floor": floor, "seconds": time.perf_counter() - start}
    if jax.process_index() == 0:
      os.makedirs(self.workdir.eval, exist_ok=True)
      with open(self.workdir.eval_log, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    report(f"step {step}: eval of {metrics['num_samples']} samples: "
           f"{summary(metrics, floor)}" + (f" [{metrics['warning']}]" if "warning" in metrics
                                           else ""))
    scalars = {}
    for key in ("fd", "kid", "coverage", "accuracy"):
      if key in metrics:
        scalars[f"eval/{key}"] = metrics[key]
        scalars[f"eval/{key}_floor"] = floor[key]
    return scalars
