r"""Trains one stage: `diffax.pipeline.train.train_and_evaluate(config, workdir)`.

  python scripts/train.py --config=configs/digits.py --workdir=workdirs/digits \
      [--config.train.num_steps=500 ...]

Resumes from the newest checkpoint in --workdir; writes metrics.jsonl, TensorBoard logs,
sample grids under samples/, checkpoints under checkpoints/ and the resolved config.json.
A bad config value is one line on stderr and exit status 1 (--debug shows the traceback).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # configs/
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from ml_collections import config_flags

from diffax.pipeline import cli
from diffax.pipeline import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
