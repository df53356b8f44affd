"""The feature networks of an evaluation, and what they need from disk.

Two feature spaces (`config.eval.features`):
- "classifier": the penultimate features of a small CNN trained by diffax on the data set
  (configs/classifier.py). No download. It lives in its own run directory,
  `config.eval.classifier_workdir` (default `<workdir>/eval/classifier`); when that holds no
  finished classifier and the config carries the recipe (`config.eval.classifier`), it is
  trained there first (about a minute for the digits; it resumes if interrupted), so an
  evaluation never silently uses another network. Numbers from different classifiers do not
  compare: share one between runs by naming the same directory.
- "inception": pytorch-fid's FID Inception (`diffax.evaluation.inception`), from the user's
  weights file (`config.eval.inception_weights`): pytorch-fid's .pth, converted once and cached
  as .npz (reading a .pth needs PyTorch; the cached .npz does not), or such an .npz itself.

`FeatureNet(images)` computes `(features [N, F], logits [N, K] or None)` in batches over the
mesh; `reference(...)` returns the statistics of a split of real data, cached as .npz.
"""

import dataclasses
import os
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np

from diffax import evaluation
from diffax.evaluation import distances
from diffax.interop import pytorch_fid
from diffax.pipeline import checkpoint
from diffax.pipeline import parallel
from diffax.pipeline import sample as sample_lib
from diffax.pipeline.tasks import classifier as classifier_task
from diffax.pipeline.train_log import report
from diffax.pipeline.workdir import Workdir

FEATURES = ("classifier", "inception")
CACHE_DIR = os.path.join("~", ".cache", "diffax", "inception")
# Reference features kept for KID (subsets of 1,000 are drawn from them); the statistics of FD
# use every image of the split.
KID_REFERENCE_MAX = 10_000


def missing_weights_message() -> str:
  return (f"FID/KID with Inception features need pytorch-fid's weights: download "
          f"{pytorch_fid.WEIGHTS_URL} and pass its path with --inception_weights "
          f"(scripts/evaluate.py) or config.eval.inception_weights (training); nothing is "
          f"downloaded at run time. Or use the classifier features "
          f"(config.eval.features=classifier)")


def load_inception(path: Optional[str]):
  """The FID Inception's variables from pytorch-fid's .pth (converted once, cached as .npz
  under `$DIFFAX_CACHE` or ~/.cache/diffax/inception) or from such an .npz.

  Raises:
    FileNotFoundError: no path, or no file there (the message says where to get it).
    ValueError: weights of the wrong shape, or a .pth without PyTorch installed.
  """
  if not path:
    raise FileNotFoundError(missing_weights_message())
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Inception weights {path}: no such file. "
                            + missing_weights_message())
  if path.endswith(".npz"):
    with np.load(path) as npz:
      flat = {k: npz[k] for k in npz.files}
    return _check_variables(_unflatten(flat), path)
  stat = os.stat(path)
  cache_dir = os.path.expanduser(os.environ.get("DIFFAX_CACHE", CACHE_DIR))
  cached = os.path.join(cache_dir, f"{os.path.basename(path)}-{stat.st_size}-"
                                   f"{stat.st_mtime_ns}.npz")
  if os.path.exists(cached):
    return load_inception(cached)
  try:
    import torch  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  except ImportError:
    raise ValueError(f"Inception weights {path}: reading a .pth file needs PyTorch (pip "
                     f"install torch); or convert it where PyTorch is installed and pass the "
                     f".npz that diffax caches in {cache_dir}") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(f"Inception weights {path} is not a PyTorch weights file "
                     f"({type(e).__name__}: {e}). " + missing_weights_message()) from None
  variables = pytorch_fid.inception_from_torch(
      {k: v.numpy() for k, v in state.items() if hasattr(v, "numpy")})
  if jax.process_index() == 0:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = cached + ".tmp.npz"
    np.savez(tmp, **_flatten(variables))
    os.replace(tmp, cached)
    report(f"converted {path} to {cached} (used from now on)")
  return variables


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    out.update(_flatten(value, name + "/") if isinstance(value, dict) else {name: value})
  return out


def _unflatten(flat):
  tree = {}
  for name, value in flat.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def _check_variables(variables, path):
  want = _flatten(jax.tree.map(lambda s: s.shape, evaluation.inception.variable_shapes()))
  got = _flatten(variables)
  bad = [k for k in want if k not in got or tuple(np.shape(got[k])) != tuple(want[k])]
  if bad or set(got) - set(want):
    raise ValueError(f"Inception weights {path} do not hold the FID Inception's variables "
                     f"(e.g. {(bad or sorted(set(got) - set(want)))[0]}); "
                     + missing_weights_message())
  return variables


@dataclasses.dataclass
class FeatureNet:
  """A feature network on the mesh: `net(images) -> (features, logits or None)`.

  Attributes:
    name: "classifier" or "inception".
    dim: the feature dimension F.
    num_classes: K of the logits, 0 without.
    identity: what the features depend on (for cache keys): network and weights.
    apply: `apply(params, images) -> (features, logits)`, jitted.
    params: the network's params, replicated over the mesh.
    mesh: the devices.
    batch_size: images per call.
  """
  name: str
  dim: int
  num_classes: int
  identity: str
  apply: Callable
  params: Any
  mesh: Any
  batch_size: int = 500

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
    return parallel.map_batches(self.apply, self.params, images, self.mesh,
                                batch_size=self.batch_size)


def inception_net(path: Optional[str], mesh, *, batch_size: int = 100) -> FeatureNet:
  variables = parallel.replicate(load_inception(path), mesh)
  apply = jax.jit(lambda p, x: (evaluation.inception_pool3(p, x), None))
  return FeatureNet(name="inception", dim=evaluation.inception.FEATURE_DIM, num_classes=0,
                    identity=f"inception:{os.path.basename(path)}", apply=apply,
                    params=variables, mesh=mesh, batch_size=batch_size)


def classifier_dir(config, workdir: Workdir) -> Workdir:
  """The directory of the run's feature classifier (`config.eval.classifier_workdir`)."""
  path = config.eval.get("classifier_workdir")
  return Workdir(os.path.expanduser(path)) if path else Workdir(workdir.eval_classifier)


def check_classifier_source(config, workdir: Workdir) -> None:
  """Raises ValueError when the evaluation needs a classifier that is neither trained nor
  trainable from the config."""
  where = classifier_dir(config, workdir)
  if checkpoint.latest_step_in(where.checkpoints) is None and config.eval.get(
      "classifier") is None:
    raise ValueError(
        f"no feature classifier in {where} and config.eval.classifier (its recipe) is unset: "
        f"train one with `python scripts/train.py --config=configs/classifier.py:dataset="
        f"{config.data.dataset} --workdir={where}` (or set config.eval.classifier_workdir), or "
        f"use Inception features (config.eval.features=inception with inception_weights)")


def ensure_classifier(config, workdir: Workdir) -> Workdir:
  """The run's feature classifier, trained first when its directory holds no finished one.

  Returns:
    Its `Workdir`.

  Raises:
    ValueError: no classifier and no recipe; a classifier trained on other images than the
      run's; or training it was stopped (SIGTERM/SIGINT; running again resumes it).
  """
  check_classifier_source(config, workdir)
  where = classifier_dir(config, workdir)
  recipe = config.eval.get("classifier")
  saved = where.load_config() if os.path.exists(where.config) else None
  target = (saved or recipe).train.num_steps
  done = checkpoint.latest_step_in(where.checkpoints) or 0
  if done < target:
    from diffax.pipeline import train  # pylint: disable=g-import-not-at-top,import-outside-toplevel
    report(f"training the evaluation's feature classifier in {where} (step {done} of "
           f"{target}; configs/classifier.py)")
    state = train.train_and_evaluate(saved or recipe, where)
    if int(state.step) < target:
      raise ValueError(f"training the feature classifier in {where} stopped at step "
                       f"{int(state.step)} of {target}; run the same command again to resume")
  trained = where.load_config()
  for key in ("dataset", "image_size", "channels"):
    if trained.data[key] != config.data[key]:
      raise ValueError(f"the feature classifier in {where} was trained on data.{key}="
                       f"{trained.data[key]!r}, this run's is {config.data[key]!r}: set "
                       f"config.eval.classifier_workdir to a classifier of this data")
  return where


def classifier_net(config, workdir: Workdir, mesh, *, batch_size: int = 500) -> FeatureNet:
  """The run's feature classifier (trained first if needed; see `ensure_classifier`)."""
  where = ensure_classifier(config, workdir)
  trained = where.load_config()
  net = classifier_task.network(trained)
  params, step = sample_lib.load_ema_params(where, trained, net, mesh=mesh)
  apply = jax.jit(net.features_fn)
  return FeatureNet(name="classifier", dim=net.feature_dim, num_classes=net.num_classes,
                    identity=f"classifier:{os.path.abspath(where.path)}@{step}", apply=apply,
                    params=params, mesh=mesh, batch_size=batch_size)


@dataclasses.dataclass
class RealData:
  """A split of the run's data set: images `[N, H, W, C]` in [-1, 1] and labels `i32[N]`."""
  split: str
  images: np.ndarray
  labels: np.ndarray


def real_data(config, split: str) -> RealData:
  """Every image of `split` of `config.data`, in file order."""
  from diffax.pipeline import data  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  arrays = data.load_eval_images(config, None, split=split)
  return RealData(split=split, images=arrays["image"], labels=arrays["label"])


@dataclasses.dataclass
class Reference:
  """The features of real data that samples are compared with.

  Attributes:
    stats: their `FeatureStats` (every image).
    features: up to KID_REFERENCE_MAX of them (for KID).
    logits: the classifier's logits of every image, or None.
  """
  stats: distances.FeatureStats
  features: np.ndarray
  logits: Optional[np.ndarray]


def reference(net: FeatureNet, real: RealData, cache: str) -> Reference:
  """The features of `real` under `net`, computed once and cached in the .npz `cache`
  (recomputed when the network or the data differ from the cached ones)."""
  key = f"{net.identity}|{real.split}|{real.images.shape}|{float(real.images.sum()):.6e}"
  if os.path.exists(cache):
    with np.load(cache) as npz:
      if str(npz["key"]) == key:
        logits = npz["logits"] if npz["logits"].size else None
        return Reference(distances.FeatureStats(int(npz["count"]), npz["mean"], npz["scatter"]),
                         npz["features"], logits)
    logging.info("recomputing the reference statistics %s (another network or data)", cache)
  feats, logits = net(real.images)
  stats = distances.FeatureStats.of(feats)
  ref = Reference(stats, feats[:KID_REFERENCE_MAX], logits)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    tmp = cache + ".tmp.npz"
    np.savez(tmp, key=key, count=stats.count, mean=stats.mean, scatter=stats.scatter,
             features=ref.features, logits=np.zeros((0,)) if logits is None else logits)
    os.replace(tmp, cache)
  return ref
