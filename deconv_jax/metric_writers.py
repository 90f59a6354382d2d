"""Scalar metrics to a JSON-lines file (one JSON object a line) and TensorBoard event files; image grids to a
directory of PNGs and to TensorBoard. Where they go is the run directory's to say (`workdir.RunDir`).

TensorBoard files are written with tensorboardX, which needs no TensorFlow; for a ``gs://`` run it writes them
to a local staging directory, and each flush uploads them whole (tensorboardX's own ``gs://`` writer uploads again
when it is garbage-collected, at exit too, where it retries for minutes if the bucket is gone). Only process 0
writes.

``metrics.jsonl`` is appended to on a local disk; on ``gs://``, where an object cannot be appended to, it is
rewritten whole at each write (one upload: a kill leaves the previous version or the new one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable

import jax
import numpy as np

from deconv_jax import figures, storage


def read_records(path: str) -> tuple[list[dict], int]:
  """The records of a ``metrics.jsonl``, and how many of its lines are not a whole record.

  A run killed while it appended leaves its last line torn; that line (or any other that does not parse) is
  not a record, and is counted, not raised, so a killed run can be read and resumed as it is.
  """
  records, torn = [], 0
  for line in storage.read_text(path).splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      torn += 1
      continue
    if isinstance(record, dict) and isinstance(record.get("step"), int):
      records.append(record)
    else:
      torn += 1
  return records, torn


class MetricWriter:
  """``write(step, split, metrics)`` appends ``{"step", "split", **metrics}`` and logs ``split/name`` scalars."""

  def __init__(
    self,
    metrics: str,
    tensorboard: str,
    samples: str,
    resume_step: int | None = None,
    log: Callable[[str], None] = print,
  ):
    """``metrics``: the JSON-lines file; ``tensorboard``, ``samples``: directories. ``resume_step``: the step a
    run resumes from; records of later steps (written before the run was interrupted, and about to be written
    again) are dropped from ``metrics`` first. Lines that are not a whole record (a run killed mid-write) are
    dropped too, and ``log`` says so in one line: appended to, a torn line would swallow the next record."""
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter

    self._samples = samples
    self._path = path = metrics
    self._lines: list[str] = []  # on gs://, the file's whole text, rewritten at each write
    if storage.exists(path):
      records, torn = read_records(path)
      kept = [r for r in records if resume_step is None or r["step"] <= resume_step]
      if torn:
        log(f"{path}: dropped {torn} line(s) that are not a whole record (a run killed while writing it)")
      self._lines = [json.dumps(r) + "\n" for r in kept]
      if torn or len(kept) != len(records):  # replaced whole: a kill now leaves the old file or the new one
        storage.write_text(path, "".join(self._lines))
    self._jsonl = None if storage.is_gcs(path) else open(path, "a")  # noqa: SIM115 - open until close()
    self._tensorboard = tensorboard
    self._staging = tempfile.mkdtemp(prefix="tensorboard-") if storage.is_gcs(tensorboard) else None
    self._tb = SummaryWriter(self._staging or tensorboard)

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    line = json.dumps({"step": step, "split": split, **metrics}) + "\n"
    if self._jsonl is None:
      self._lines.append(line)
      storage.write_text(self._path, "".join(self._lines))
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)
    self._flush_tensorboard()

  def write_images(self, step: int, name: str, images: np.ndarray) -> str | None:
    """A grid of ``images`` (``[0, 1]``) to ``{samples}/{name}_{step:06d}.png`` and TensorBoard; returns the path.

    ``images`` is ``[N, H, W, C]`` (8 a row) or laid out as ``[rows, cols, H, W, C]``.
    """
    if not self._active:
      return None
    path = storage.join(self._samples, f"{name}_{step:06d}.png")
    images = np.asarray(images)
    cols = images.shape[1] if images.ndim == 5 else 8
    grid = figures.image_grid(images.reshape(-1, *images.shape[-3:]), cols)
    figures.save_image(grid, path)
    self._tb.add_image(name, grid, step, dataformats="HWC")
    self._flush_tensorboard()
    return path

  def close(self) -> None:
    if self._active:
      if self._jsonl is not None:
        self._jsonl.close()
      self._flush_tensorboard()
      self._tb.close()
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)

  def _flush_tensorboard(self) -> None:
    self._tb.flush()
    if self._staging is not None:  # each event file uploaded whole: a kill leaves the last upload readable
      for name in os.listdir(self._staging):
        with open(os.path.join(self._staging, name), "rb") as f:
          storage.write_bytes(storage.join(self._tensorboard, name), f.read())
