"""optax optimizers and learning-rate schedules from ``config.optimizer``."""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import optax


def _warmup_cosine(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(opt_cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    0.0, opt_cfg.learning_rate, warmup_steps=warmup, decay_steps=max(total_steps, 1)
  )


# name -> schedule(opt_cfg, total_steps): constant; cosine to 0 at total_steps; linear warm-up, then cosine.
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {
  "constant": lambda opt_cfg, total_steps: optax.constant_schedule(opt_cfg.learning_rate),
  "cosine": lambda opt_cfg, total_steps: optax.cosine_decay_schedule(
    opt_cfg.learning_rate, decay_steps=max(total_steps, 1)
  ),
  "warmup_cosine": _warmup_cosine,
}

# name -> optimizer(opt_cfg, schedule).
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule], optax.GradientTransformation]] = {
  "adam": lambda opt_cfg, schedule: optax.adam(schedule, b1=opt_cfg.b1),
  "adamw": lambda opt_cfg, schedule: optax.adamw(schedule, b1=opt_cfg.b1, weight_decay=opt_cfg.weight_decay),
  "sgd": lambda opt_cfg, schedule: optax.sgd(schedule),
  "momentum": lambda opt_cfg, schedule: optax.sgd(schedule, momentum=opt_cfg.momentum),
}


def learning_rate(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The schedule named by ``opt_cfg.schedule``, one of `SCHEDULES`."""
  if opt_cfg.schedule not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt_cfg.schedule!r} is not allowed")
  return SCHEDULES[opt_cfg.schedule](opt_cfg, total_steps)


def make(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by ``opt_cfg.name``, one of `OPTIMIZERS`, with the schedule from `learning_rate`."""
  if opt_cfg.name not in OPTIMIZERS:
    raise ValueError(f"config.optimizer.name={opt_cfg.name!r} is not allowed")
  return OPTIMIZERS[opt_cfg.name](opt_cfg, learning_rate(opt_cfg, total_steps))
