"""Tasks: one module each, and every task module satisfies `Task`.

`parallel.DataParallel` compiles ``train_step`` and ``eval_step`` over every device with
``axis_name="batch"``; ``axis_name=None`` (no collectives) runs them under a plain ``jax.jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections
import numpy as np

from deconv_jax.config import ConfigError
from deconv_jax.tasks import autoencoder, classifier, gan, inversion


@runtime_checkable
class Task(Protocol):
  """What the rest of the code uses of a task module. Each module in ``tasks/`` satisfies it (a test checks).

  ``state`` is the task's pytree (a flax ``TrainState`` or a ``struct.PyTreeNode``); a batch is
  ``{"image": [N, H, W, C] float in [0, 1], "label": [N] int32}``, plus ``"mask": [N]`` (0 for padding) in eval.
  """

  # The config section an error names when the model cannot take the data's images.
  model_section: str
  # samples(state) -> images [..., H, W, C] in [0, 1]: a grid written every sample_every_steps; None: no grid.
  samples: Callable[[Any], jax.Array] | None
  # generate_many(state, n) -> images [n, H, W, C] in [0, 1], measured by `measure`; None: it generates nothing.
  generate_many: Callable[[Any, int], np.ndarray] | None

  def create_state(self, config: ml_collections.ConfigDict, rng: jax.Array, info: Any, total_steps: int) -> Any:
    """The initial state for images of ``info.image_shape`` (and ``info.num_classes`` classes)."""
    ...

  def train_step(
    self,
    state: Any,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    axis_name: str | None = None,
  ) -> tuple[Any, dict[str, jax.Array]]:
    """One update: ``(state, metrics)``, gradients and metrics ``pmean``-ed over ``axis_name``."""
    ...

  def eval_step(self, state: Any, batch: dict[str, jax.Array], *, axis_name: str | None = None) -> dict[str, jax.Array]:
    """Per-batch sums over the real rows (``mask`` 1), ``psum``-ed over ``axis_name``."""
    ...

  def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
    """Metrics from `eval_step`'s sums over a whole split."""
    ...


_TASKS: dict[str, Task] = {
  "classifier": classifier,
  "gan": gan,
  "autoencoder": autoencoder,
  "inversion": inversion,
}


def get(name: str) -> Task:
  """The task module called ``name`` (``config.task``); `ConfigError` naming the registered ones if none is."""
  if name not in _TASKS:
    raise ConfigError(f"config.task={name!r} is not allowed: one of {tuple(_TASKS)}")
  return _TASKS[name]


def check_model_fits(task: Task, config: ml_collections.ConfigDict, info: Any) -> None:
  """Builds the task's state in shapes only (no compute); ConfigError if the model cannot take ``info.image_shape``."""
  try:
    jax.eval_shape(lambda r: task.create_state(config, r, info, 1), jax.random.key(0))
  except ConfigError:  # already names its key
    raise
  except ValueError as e:
    raise ConfigError(f"config.{task.model_section} cannot take images of shape {info.image_shape}: {e}") from None
