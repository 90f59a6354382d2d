"""Scalar metrics to ``WORKDIR/metrics.jsonl`` (one JSON object a line) and TensorBoard event files.

TensorBoard files are written with tensorboardX, which needs no TensorFlow.
Only process 0 writes.
"""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """``write(step, split, metrics)`` appends ``{"step", "split", **metrics}`` and logs ``split/name`` scalars."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter

    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115 - open until close()
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split}/{name}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()
