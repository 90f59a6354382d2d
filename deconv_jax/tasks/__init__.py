"""Tasks: one module each, with the same five functions.

A task module provides::

  create_state(config, rng, info, total_steps) -> state   # a pytree (flax TrainState)
  train_step(state, batch, rng, *, config, axis_name=None) -> (state, metrics)
  eval_step(state, batch, *, axis_name=None) -> sums       # per-batch sums, masked
  eval_metrics(sums) -> dict[str, float]                  # sums over a split -> metrics
  metric_names: tuple[str, ...]                           # the train metrics it reports
  samples(state) -> images [N, H, W, C] in [0, 1]          # optional: a grid written every sample_every_steps

`train` compiles ``train_step`` once with ``jax.jit`` (one device, ``axis_name=None``)
or ``jax.pmap`` (several, ``axis_name="batch"``).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import jax
import ml_collections

from deconv_jax.config import ConfigError
from deconv_jax.tasks import autoencoder, classifier, gan, inversion

_TASKS: dict[str, ModuleType] = {
  "classifier": classifier,
  "gan": gan,
  "autoencoder": autoencoder,
  "inversion": inversion,
}


def get(name: str) -> ModuleType:
  """The task module called ``name`` (``config.task``)."""
  if name not in _TASKS:
    raise ValueError(f"config.task={name!r} is not allowed: one of {tuple(_TASKS)}")
  return _TASKS[name]


def check_model_fits(task: ModuleType, config: ml_collections.ConfigDict, info: Any) -> None:
  """Builds the task's state in shapes only (no compute); ConfigError if the model cannot take ``info.image_shape``."""
  try:
    jax.eval_shape(lambda r: task.create_state(config, r, info, 1), jax.random.key(0))
  except ConfigError:  # already names its key
    raise
  except ValueError as e:
    section = getattr(task, "model_section", "model")
    raise ConfigError(f"config.{section} cannot take images of shape {info.image_shape}: {e}") from None
