"""Where training metrics go: `metrics.jsonl` (one JSON object per logged step) and TensorBoard.

Only the process that owns the logs (process 0 of a multi-host run) should create a writer.
"""

import json
import math
import os

from diffax.pipeline.workdir import Workdir


class MetricWriter:
  """Appends `{"step": int, name: float, ...}` lines to `<workdir>/metrics.jsonl` and writes
  the same scalars as TensorBoard summaries under `<workdir>/tensorboard`.

  A resumed run appends to the same file; lines for steps past the resume point (written by a
  run that died before its next checkpoint) are dropped at open, so the file holds each step once.
  """

  def __init__(self, workdir, *, start_step: int = 0, tensorboard: bool = True):
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    os.makedirs(workdir.path, exist_ok=True)
    self.path = workdir.metrics
    _truncate_after(self.path, start_step)
    self._file = open(self.path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._tf = tf
      self._tb = tf.summary.create_file_writer(workdir.tensorboard)
      # tf.summary.scalar lives in the separate `tensorboard` package; the core write op with
      # the scalars plugin's metadata produces the same events without it.
      self._scalar_metadata = tf.compat.v1.SummaryMetadata(
          plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))

  def write(self, step: int, scalars: dict) -> None:
    record = {"step": int(step)}
    record.update({k: _to_json_number(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in scalars.items():
          self._tf.summary.write(k, self._tf.constant(float(v), self._tf.float32),
                                 metadata=self._scalar_metadata)
      self._tb.flush()

  def close(self) -> None:
    self._file.close()
    if self._tb is not None:
      self._tb.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def read_metrics(workdir) -> list[dict]:
  """The records of a workdir's (a `Workdir` or its path) metrics.jsonl, in order."""
  path = (workdir if isinstance(workdir, Workdir) else Workdir(workdir)).metrics
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _to_json_number(v):
  v = float(v)
  return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf; keep them readable


def _truncate_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= step]
  if len(kept) != len(lines):
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(kept)


def _step_of(line):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a line cut short by a kill
