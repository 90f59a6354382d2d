r"""Evaluates a run: ``python -m deconv_jax.evaluate --workdir DIR [--config.KEY=VALUE ...]``.

Loads the config saved in ``DIR`` and its latest checkpoint, and evaluates on the
config's ``dataset.eval_split`` — or on another dataset given by overrides, e.g. the
real MNIST test set::

  python -m deconv_jax.evaluate --workdir workdirs/quickstart \
    --config.dataset.source=idx --config.dataset.data_dir=../shared/data/mnist --config.dataset.eval_split=test

The last line printed is the metrics as one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import flags

from deconv_jax import checkpoint, cli, data, measure, parallel, tasks
from deconv_jax import config as config_lib


def compile_eval_step(task: Any) -> Callable[..., dict[str, jax.Array]]:
  """``task.eval_step`` under ``jax.jit`` (one device) or ``jax.pmap`` (several, sums psum-ed)."""
  if jax.device_count() > 1:
    return jax.pmap(lambda s, b: task.eval_step(s, b, axis_name=parallel.AXIS), axis_name=parallel.AXIS)
  return jax.jit(task.eval_step)


def evaluate_state(
  task: Any, eval_step: Callable[..., Any], state: Any, source: Any, global_batch_size: int
) -> dict[str, float]:
  """Task metrics over every example of ``source`` (each once), for a state placed as ``eval_step`` expects.

  Each process evaluates its own share; under ``pmap`` the sums are ``psum``-ed over
  every device of every process, so all processes return the same global metrics.
  """
  multi_device = jax.device_count() > 1
  # Batches are padded (mask 0), so any size works: round up to fill every device alike.
  global_batch_size = -(-global_batch_size // jax.device_count()) * jax.device_count()
  totals: dict[str, float] = {}
  for batch in data.eval_batches(source, global_batch_size=global_batch_size):
    sums = eval_step(state, parallel.shard(batch) if multi_device else batch)
    sums = jax.device_get(sums)
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(np.asarray(v).reshape(-1)[0] if multi_device else v)
  return task.eval_metrics(totals)


def restore_run(config: Any, workdir: str, command: str = "evaluate") -> tuple[Any, Any, int, data.DatasetInfo]:
  """The task, latest train state (on host), its step and the training data's info of the run in ``workdir``.

  ``config`` is the run's saved config with overrides of ``config.dataset.*`` only
  (which data to look at); anything else would not describe the checkpoint.
  """
  config_lib.validate(config)
  task = tasks.get(config.task)
  step = checkpoint.latest_step(workdir)
  if step is None:
    raise config_lib.ConfigError(f"--workdir={workdir} has no checkpoint: train first")
  info = data.get_info(config.dataset, config.dataset.eval_split)
  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  changed = [d for d in config_lib.differences(saved, config) if not d.startswith("dataset.")]
  if changed:
    raise config_lib.ConfigError(
      f"{command} takes overrides of config.dataset.*, measure.* and eval_batch_size only; the run's config differs: "
      f"{changed[0]}"
    )
  train_info = data.get_info(saved.dataset, saved.dataset.train_split)
  if info.image_shape != train_info.image_shape or info.num_classes != train_info.num_classes:
    raise config_lib.ConfigError(
      f"config.dataset: {config.dataset.source}:{config.dataset.eval_split} has images {info.image_shape} and "
      f"{info.num_classes} classes, the model was trained on {train_info.image_shape} with {train_info.num_classes}"
    )
  template = jax.eval_shape(lambda r: task.create_state(config, r, train_info, 1), jax.random.key(0))
  template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  state = checkpoint.restore(mngr, step, template)
  mngr.close()
  return task, state, step, train_info


def evaluate_workdir(config: Any, workdir: str) -> dict[str, float]:
  """Restores the latest checkpoint of ``workdir`` and evaluates it with ``config`` (its dataset.eval_split)."""
  task, host_state, step, _ = restore_run(config, workdir)
  source = data.get_source(config.dataset, config.dataset.eval_split)
  state = parallel.replicate(host_state) if jax.device_count() > 1 else host_state
  metrics = evaluate_state(task, compile_eval_step(task), state, source, config.eval_batch_size)
  if hasattr(task, "generate_many") and config.measure.classifier_workdir:
    metrics.update(generator_quality(task, host_state, config))
  return {**metrics, "step": step}


def generator_quality(task: Any, state: Any, config: Any) -> dict[str, float]:
  """FID, classifier score and checkerboard score of ``config.measure.num_samples`` generated images.

  Measured against every image of ``config.measure.real_*`` (default: the eval split) with the
  classifier run in ``config.measure.classifier_workdir``.
  """
  featurizer = measure.Featurizer(config.measure.classifier_workdir)
  real = measure.real_images(config)
  generated = task.generate_many(state, config.measure.num_samples)
  return measure.generated_quality(generated, real, featurizer)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  workdir = flags.FLAGS.workdir
  metrics = evaluate_workdir(flags.FLAGS.config, workdir)
  print(json.dumps(metrics), flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.evaluate``, ``deconv-evaluate``)."""
  cli.run(main, lambda: cli.define_workdir_flags(sys.argv))


if __name__ == "__main__":
  run()
