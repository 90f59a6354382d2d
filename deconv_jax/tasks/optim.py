"""optax optimizers and learning-rate schedules from ``config.optimizer``."""

from __future__ import annotations

import ml_collections
import optax


def learning_rate(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """``constant``, ``cosine`` (to 0 at ``total_steps``) or ``warmup_cosine`` (linear warm-up, then cosine)."""
  lr = opt_cfg.learning_rate
  if opt_cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if opt_cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
  if opt_cfg.schedule == "warmup_cosine":
    warmup = min(opt_cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, 1))
  raise ValueError(f"config.optimizer.schedule={opt_cfg.schedule!r} is not allowed")


def make(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by ``opt_cfg.name`` with the schedule from `learning_rate`."""
  schedule = learning_rate(opt_cfg, total_steps)
  if opt_cfg.name == "adam":
    return optax.adam(schedule, b1=opt_cfg.b1)
  if opt_cfg.name == "adamw":
    return optax.adamw(schedule, b1=opt_cfg.b1, weight_decay=opt_cfg.weight_decay)
  if opt_cfg.name == "sgd":
    return optax.sgd(schedule)
  if opt_cfg.name == "momentum":
    return optax.sgd(schedule, momentum=opt_cfg.momentum)
  raise ValueError(f"config.optimizer.name={opt_cfg.name!r} is not allowed")
