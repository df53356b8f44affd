"""The run directory: the one module that knows its layout.

  DIR/config.json          the resolved config (what sample.py and evaluate.py read back)
  DIR/metrics.jsonl        one JSON object per logged step
  DIR/tensorboard/         the same scalars for TensorBoard
  DIR/checkpoints/<step>/  Orbax checkpoints
  DIR/samples/             sample grids during training (step_<step>.png + .npz)
  DIR/eval/                evaluation results: training.jsonl (during training), sweep.jsonl
                           and sweep.md (scripts/evaluate.py), bits_per_dim.json,
                           reference_<name>.npz (cached statistics of real data),
                           classifier/ (the feature classifier's own run directory)

Every other module asks a `Workdir` for these paths; none joins them itself.
"""

import json
import os

import ml_collections

CONFIG_FILE = "config.json"


class Workdir:
  """Paths of one run directory (created on demand by the writers, not here)."""

  def __init__(self, path: str):
    self.path = os.fspath(path)

  def __repr__(self) -> str:
    return f"Workdir({self.path!r})"

  def __str__(self) -> str:
    return self.path

  @property
  def config(self) -> str:
    return os.path.join(self.path, CONFIG_FILE)

  @property
  def metrics(self) -> str:
    return os.path.join(self.path, "metrics.jsonl")

  @property
  def tensorboard(self) -> str:
    return os.path.join(self.path, "tensorboard")

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def samples(self) -> str:
    return os.path.join(self.path, "samples")

  @property
  def eval(self) -> str:
    return os.path.join(self.path, "eval")

  @property
  def eval_classifier(self) -> str:
    """Where the evaluation's feature classifier is trained when no other is named."""
    return os.path.join(self.eval, "classifier")

  @property
  def eval_log(self) -> str:
    """One JSON object per evaluation during training."""
    return os.path.join(self.eval, "training.jsonl")

  def eval_table(self, name: str) -> tuple[str, str]:
    """The JSON lines and markdown paths of an evaluation table (e.g. "sweep")."""
    return (os.path.join(self.eval, f"{name}.jsonl"), os.path.join(self.eval, f"{name}.md"))

  def eval_file(self, name: str) -> str:
    """A file of evaluation results or cached statistics under eval/."""
    return os.path.join(self.eval, name)

  def sample_grid(self, step: int) -> str:
    """The PNG of the samples drawn at `step` during training (an .npz goes beside it)."""
    return os.path.join(self.samples, f"step_{step:08d}.png")

  def default_samples(self) -> str:
    """Where scripts/sample.py writes when no --out is given."""
    return os.path.join(self.path, "samples.png")

  def default_cascade_samples(self) -> str:
    """Where scripts/sample.py writes a cascade ending at this stage when no --out is given."""
    return os.path.join(self.path, "cascade.png")

  def save_config(self, config) -> str:
    """Writes the resolved config atomically (never a half-written file)."""
    os.makedirs(self.path, exist_ok=True)
    tmp = self.config + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, self.config)
    return self.config

  def load_config(self, defaults=None) -> ml_collections.ConfigDict:
    """The locked config saved by a training run here.

    Args:
      defaults: a config (e.g. `configs.common.base_config()`) whose keys fill in the keys a run
        saved before they existed; its values are the defaults of new runs.

    Raises:
      FileNotFoundError: when the directory holds no config.json (not a training run).
    """
    if not os.path.exists(self.config):
      what = "does not exist" if not os.path.isdir(self.path) else "holds no " + CONFIG_FILE
      raise FileNotFoundError(f"--workdir={self.path} {what}: give a directory written by "
                              f"scripts/train.py")
    with open(self.config, encoding="utf-8") as f:
      saved = _tuples(json.load(f))
    config = ml_collections.ConfigDict(saved)
    if defaults is not None:
      _fill_missing(config, defaults)
    config.lock()
    return config


def _fill_missing(config, defaults) -> None:
  """Adds the keys of `defaults` that `config` lacks (recursively), with their values."""
  for key, value in defaults.items():
    if key not in config:
      with config.unlocked():
        config[key] = value
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        config[key], ml_collections.ConfigDict):
      _fill_missing(config[key], value)


def _tuples(d):
  """JSON turns tuples into lists; configs use tuples for fixed-length fields."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d
