"""Evaluating a task's state over every example of a source, and the latest checkpoint of a run directory.

`train` evaluates as it trains and ``python -m deconv_jax.evaluate`` evaluates a finished run; both go
through `compile_eval_step` and `evaluate_state`, so an eval during training and one afterwards are the
same computation (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from deconv_jax import data, measure, parallel, tasks
from deconv_jax import workdir as workdir_lib


def compile_eval_step(task: tasks.Task, dp: parallel.DataParallel) -> Callable[..., dict[str, jax.Array]]:
  """``task.eval_step`` compiled by ``dp`` over every device (sums psum-ed): ``(state, local_batch) -> sums``."""
  return dp.eval_step(lambda s, b, axis_name: task.eval_step(s, b, axis_name=axis_name))


def evaluate_state(
  task: tasks.Task, eval_step: Callable[..., Any], state: Any, source: data.Source, global_batch_size: int
) -> dict[str, float]:
  """Task metrics over every example of ``source`` (each once), for a state placed as ``eval_step`` expects.

  Each process evaluates its own share; the sums are ``psum``-ed over every device of
  every process, so all processes return the same global metrics.
  """
  # Batches are padded (mask 0), so any size works: round up to fill every device alike.
  global_batch_size = -(-global_batch_size // jax.device_count()) * jax.device_count()
  totals: dict[str, float] = {}
  for batch in data.eval_batches(source, global_batch_size=global_batch_size):
    sums = jax.device_get(eval_step(state, batch))
    for k, v in sums.items():  # a scalar, or (pmap) one equal value per local device
      totals[k] = totals.get(k, 0.0) + float(np.asarray(v).reshape(-1)[0])
  return task.eval_metrics(totals)


def evaluate_workdir(config: ml_collections.ConfigDict, path: str) -> dict[str, float]:
  """The metrics of the latest checkpoint in run directory ``path`` on ``config.dataset.eval_split``, and its step.

  A generator run is also measured (`measure.generator_quality`) when ``config.measure.classifier_workdir`` is set.
  """
  run = workdir_lib.restore(config, path, tasks.get(config.task))
  source = data.get_source(config.dataset, config.dataset.eval_split)
  dp = parallel.DataParallel(config.parallel)
  eval_step = compile_eval_step(run.task, dp)
  metrics = evaluate_state(run.task, eval_step, dp.put_state(run.state), source, config.eval_batch_size)
  if run.task.generate_many is not None and config.measure.classifier_workdir:
    metrics.update(measure.generator_quality(run.task, run.state, config))
  return {**metrics, "step": run.step}
