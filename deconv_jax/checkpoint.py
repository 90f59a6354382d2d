"""Checkpoints with orbax: the train state and the data iterator, together, in a run's checkpoint directory.

What a run can count on:

* orbax writes each step into a temporary directory and renames it when complete, so a run
  killed mid-save keeps its previous checkpoints; temporary directories left by a killed save
  are removed when the next run opens the manager.
* Saves are synchronous: a full disk or any write error stops the run at that save with one
  line (`CheckpointError`), the half-written step removed and the previous checkpoint intact.
* `restore_latest` restores the newest checkpoint that restores; a damaged one (a truncated
  file) is reported in one line and the previous one is used.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from deconv_jax import storage
from deconv_jax.storage import one_line


class CheckpointError(RuntimeError):
  """A checkpoint cannot be written or no checkpoint can be read: the message is one line."""


def manager(directory: str, keep: int = 3) -> ocp.CheckpointManager:
  """The checkpoint manager of ``directory`` (absolute), keeping the last ``keep`` steps; removes what killed saves
  left."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=True, cleanup_tmp_directories=True, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(directory, options=options)


def steps(directory: str) -> list[int]:
  """The steps of the complete (finalized) checkpoints in ``directory``, ascending, per orbax; creates nothing."""
  if not storage.isdir(directory):
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory))


def latest_step(directory: str) -> int | None:
  """The latest complete checkpoint's step in ``directory``, or None; creates nothing."""
  return max(steps(directory), default=None)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_iterator: Any | None) -> None:
  """Saves ``state`` (host arrays) and, if given, the grain iterator's position, as one step.

  On a write error, removes what the failed save left and raises `CheckpointError`.
  """
  items = {"state": ocp.args.StandardSave(jax.device_get(state))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  try:
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    mngr.wait_until_finished()
  except Exception as e:
    if jax.process_index() == 0:
      remove_failed_save(str(mngr.directory), step)
    previous = [s for s in mngr.all_steps() if s != step]
    kept = f"the checkpoint of step {max(previous)} is intact" if previous else "no earlier checkpoint exists"
    message = f"saving the checkpoint of step {step} in {mngr.directory} failed ({one_line(e)}); {kept}"
    raise CheckpointError(message) from None


def remove_failed_save(directory: str, step: int, patience_s: float = 10.0) -> None:
  """Removes the temporary directory that a failed save of ``step`` left in ``directory``.

  Orbax raises at the first failed write; its other writes may still be landing. Under load, one
  `rmtree` once left the directory behind, so this removes until it stays gone, for up to ``patience_s``.
  On ``gs://`` orbax writes the step's own directory and marks it complete last (``commit_success.txt``):
  a step without the mark is what a failed save left.
  """
  if storage.is_gcs(directory):
    step_dir = storage.join(directory, str(step))
    if not storage.exists(storage.join(step_dir, "commit_success.txt")):
      storage.rmtree(step_dir)
    return
  pattern = os.path.join(directory, f"{step}.orbax-checkpoint-tmp*")
  deadline = time.monotonic() + patience_s
  while True:
    for leftover in glob.glob(pattern):
      shutil.rmtree(leftover, ignore_errors=True)
    time.sleep(0.05)  # a write in flight lands now, or not at all
    if not glob.glob(pattern) or time.monotonic() > deadline:
      return


def restore(mngr: ocp.CheckpointManager, step: int, state_template: Any, data_iterator: Any | None = None) -> Any:
  """The state saved at ``step`` (shaped like ``state_template``); moves ``data_iterator`` to its saved position."""
  items = {"state": ocp.args.StandardRestore(jax.device_get(state_template))}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return mngr.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_latest(
  mngr: ocp.CheckpointManager,
  state_template: Any,
  data_iterator: Any | None = None,
  *,
  damaged: str,
  log: Callable[[str], None] = print,
) -> tuple[Any, int] | None:
  """``(state, step)`` of the newest checkpoint that restores, or None if there is no checkpoint.

  A checkpoint that fails to restore (a truncated or missing file) is reported through ``log``
  in one line, moved to ``damaged/<step>`` and the one before it is tried; `CheckpointError` if none
  restores. With several processes, a checkpoint that fails on any of them is damaged for all (each reads
  its own data iterator's file), and none looks at the next one before process 0 has moved this one aside.
  """
  available = sorted(mngr.all_steps(), reverse=True)
  for i, step in enumerate(available):
    error = None
    try:
      _check_iterator_files(storage.join(str(mngr.directory), str(step)))
      restored = restore(mngr, step, state_template, data_iterator)
    except Exception as e:
      error = one_line(e)
    failed = _processes_that_failed(error is not None)
    if not failed:
      return restored, step
    # Moved aside, not deleted: the run will write this step again, and a person may want to look.
    aside = storage.join(damaged, str(step))
    if jax.process_index() == 0:
      storage.move(storage.join(str(mngr.directory), str(step)), aside)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    nxt = f"trying step {available[i + 1]}" if i + 1 < len(available) else "no earlier checkpoint"
    why = error or f"it does not restore on process {', '.join(map(str, failed))}"
    log(f"checkpoint {step} is damaged ({why}): moved to {aside}; {nxt}")
    mngr.reload()
  if available:
    raise CheckpointError(
      f"no checkpoint in {mngr.directory} could be restored (steps {available}, now in {damaged}): "
      "run again to start from step 0"
    )
  return None


def _check_iterator_files(step_dir: str) -> None:
  """Raises if any process's data-iterator file in ``step_dir`` is not JSON; each process reads every one.

  Each process restores only its own file, so one damaged file would fail that process alone, inside orbax's
  restore, while the others go on into the restore's collectives and wait there for it. Checked here first,
  by every process alike (the files are small), such damage fails every process at the same point.
  """
  data_dir = storage.join(step_dir, "data")
  for name in storage.listdir(data_dir):
    if name.startswith("process_") and name.endswith(".json"):
      try:
        json.loads(storage.read_text(storage.join(data_dir, name)))
      except ValueError as e:
        raise ValueError(f"data/{name}: {e}") from None


def _processes_that_failed(failed_here: bool) -> list[int]:
  """The processes on which a restore failed, the same list on every process."""
  if jax.process_count() == 1:
    return [0] if failed_here else []
  failed = np.ravel(multihost_utils.process_allgather(np.int32(failed_here)))
  return [i for i, f in enumerate(failed) if f]
