"""``metrics.jsonl`` records and sample grids: what a run leaves behind for people to read."""

import json
import os

import matplotlib.image
import numpy as np

from deconv_jax.figures import image_grid
from deconv_jax.metric_writers import MetricWriter, read_records
from deconv_jax.workdir import RunDir


def test_records_and_grids(tmp_path):
  run_dir = RunDir(str(tmp_path))
  writer = MetricWriter(run_dir.metrics, run_dir.tensorboard, run_dir.samples)
  writer.write(10, "train", {"loss": 0.5})
  writer.write(10, "eval", {"accuracy": 0.75})
  # A [rows, cols, H, W, C] layout keeps its columns (a conditional GAN: one class per column).
  layout = np.zeros((2, 10, 4, 4, 1), np.float32)
  layout[:, 3] = 1.0  # column 3 white
  path = writer.write_images(7, "samples", layout)
  flat = writer.write_images(8, "samples", np.ones((16, 4, 4, 1), np.float32))  # [N, ...]: 8 a row
  writer.close()
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line) for line in f] == [
      {"step": 10, "split": "train", "loss": 0.5},
      {"step": 10, "split": "eval", "accuracy": 0.75},
    ]
  assert os.path.basename(path) == "samples_000007.png"
  grid = (matplotlib.image.imread(path)[..., :3].mean(axis=-1) * 255).round()  # gray, as written
  assert grid.shape == (2 * (2 * 4 + 1 * 2), 2 * (10 * 4 + 9 * 2))  # zoom 2, gaps of 2
  cell = lambda r, c: grid[2 * r * 6 : 2 * r * 6 + 8, 2 * c * 6 : 2 * c * 6 + 8]
  assert (cell(0, 3) == 255).all() and (cell(1, 3) == 255).all() and (cell(1, 4) == 0).all()
  assert matplotlib.image.imread(flat).shape[:2] == (2 * (2 * 4 + 2), 2 * (8 * 4 + 7 * 2))


def test_image_grid_pads_the_last_row_with_white():
  grid = image_grid(np.zeros((3, 2, 2, 1)), cols=2, gap=1)
  assert grid.shape == (5, 5, 3)
  assert (grid[3:, 3:] == 255).all() and (grid[3:, :2] == 0).all()


def test_a_torn_last_line_is_dropped_and_said_once(tmp_path):
  """A run killed while it appended leaves half a record; the next writer drops it (with one line), keeps the
  records up to the step it resumes from, and appends whole lines after them."""
  run_dir = RunDir(str(tmp_path))
  records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (10, 20, 30)]
  torn = '{"step": 41, "spl'
  for resume_step, kept in ((20, records[:2]), (None, records)):  # resuming at 20; a finished run re-evaluated
    with open(run_dir.metrics, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
      f.write(torn)
    said = []
    writer = MetricWriter(run_dir.metrics, run_dir.tensorboard, run_dir.samples, resume_step, log=said.append)
    writer.write(50, "eval", {"accuracy": 0.5})
    writer.close()
    assert said == [f"{run_dir.metrics}: dropped 1 line(s) that are not a whole record (a run killed while writing it)"]
    with open(run_dir.metrics) as f:
      assert [json.loads(line) for line in f] == [*kept, {"step": 50, "split": "eval", "accuracy": 0.5}]
    assert read_records(run_dir.metrics) == ([*kept, {"step": 50, "split": "eval", "accuracy": 0.5}], 0)


def test_read_records_counts_what_is_not_a_record(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n\n[1, 2]\n{"loss": 3.0}\n{"step": 2, "loss"\n')
  assert read_records(str(path)) == ([{"step": 1, "loss": 2.0}], 3)
