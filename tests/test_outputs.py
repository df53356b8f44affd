"""Tests of what a run leaves for people: PNG grids, .npz samples, metrics.jsonl."""

import json

import numpy as np
from PIL import Image

from diffax.pipeline import images as image_grid
from diffax.pipeline import metric_writer


def test_grid_places_each_image_in_its_cell(tmp_path):
  images = np.stack([np.full((8, 8, 1), v) for v in np.linspace(-1, 1, 6)])
  grid = image_grid.make_grid(images, ncols=3, pad=1, min_cell=16)  # scale 2 -> 16x16 cells
  assert grid.shape == (2 * 17 + 1, 3 * 17 + 1, 1)
  for i, v in enumerate(np.linspace(-1, 1, 6)):
    r, c = divmod(i, 3)
    cell = grid[1 + r * 17:1 + r * 17 + 16, 1 + c * 17:1 + c * 17 + 16]
    assert np.all(cell == np.round((v + 1) * 127.5)), i
  assert image_grid.to_uint8(np.array([-3.0, 3.0])).tolist() == [0, 255]


def test_save_samples_writes_png_and_exact_npz(tmp_path):
  samples = np.random.default_rng(0).uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)
  png, npz = image_grid.save_samples(str(tmp_path / "out" / "s.png"), samples)
  assert npz == str(tmp_path / "out" / "s.npz")
  np.testing.assert_array_equal(np.load(npz)["samples"], samples)
  with Image.open(png) as im:
    assert im.mode == "RGB" and im.size[0] > 4 * 3


def test_metrics_jsonl_is_truncated_to_the_resume_step(tmp_path):
  with metric_writer.MetricWriter(str(tmp_path), tensorboard=False) as w:
    for step in (5, 10, 15):
      w.write(step, {"loss": step / 10})
    w.write(20, {"loss": float("nan")})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2')  # a line cut short by a kill
  with metric_writer.MetricWriter(str(tmp_path), start_step=10, tensorboard=False) as w:
    w.write(15, {"loss": 2.5})
  records = metric_writer.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [5, 10, 15]
  assert records[-1]["loss"] == 2.5
  with open(tmp_path / "metrics.jsonl") as f:
    assert all(json.loads(line) for line in f)


def test_tensorboard_events_hold_the_scalars(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with metric_writer.MetricWriter(str(tmp_path)) as w:
    w.write(3, {"loss": 0.5})
    w.write(6, {"loss": 0.25})
  events = []
  for path in (tmp_path / "tensorboard").iterdir():
    for record in tf.data.TFRecordDataset(str(path)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      for value in event.summary.value:
        assert value.metadata.plugin_data.plugin_name == "scalars"
        events.append((event.step, value.tag, float(tf.make_ndarray(value.tensor))))
  assert events == [(3, "loss", 0.5), (6, "loss", 0.25)]
