"""Checkpoints in ``WORKDIR/checkpoints`` with orbax: the train state and the data iterator, together.

orbax writes each step to a temporary directory and renames it when complete,
so a run killed mid-save keeps its previous checkpoints; restoring picks the
latest complete one.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
  """The run's checkpoint manager, keeping the last ``keep`` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint's step in ``workdir``, or None; creates nothing."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    return None
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  complete = [s for s in steps if os.path.exists(os.path.join(directory, str(s), "_CHECKPOINT_METADATA"))]
  return max(complete, default=None)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any | None) -> None:
  """Saves ``state`` (host arrays) and, if given, the grain iterator's position, as one step."""
  items = {"state": ocp.args.StandardSave(jax.device_get(state))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  mngr.save(step, args=ocp.args.Composite(**items), force=True)


def restore(mngr: ocp.CheckpointManager, step: int, state_template: Any, data_iterator: Any | None = None) -> Any:
  """The state saved at ``step`` (shaped like ``state_template``); moves ``data_iterator`` to its saved position."""
  items = {"state": ocp.args.StandardRestore(jax.device_get(state_template))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return mngr.restore(step, args=ocp.args.Composite(**items))["state"]
