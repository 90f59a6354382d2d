"""A run directory (``--workdir``): preparing it, the config saved in it, and restoring the run it holds.

A run directory holds ``config.json`` (the config the run trained with) and ``checkpoints/``
(`checkpoint`). `prepare` makes one ready for training; `restore` gives back what a finished
or interrupted run left: its config, task, latest train state, step and the training data's info.

The task is passed in, not looked up by name: the tasks themselves restore runs (the inversion
task reads a classifier run), so this module sits below them and imports none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from deconv_jax import checkpoint, data
from deconv_jax import config as config_lib


@dataclasses.dataclass(frozen=True)
class Run:
  """A run restored from its directory.

  ``config``: the run's config (with the caller's ``dataset.*`` overrides); ``task``: its task module
  (`tasks.Task`); ``state``: the latest train state, on the host (numpy leaves); ``step``: that
  checkpoint's step; ``info``: the training split's `data.DatasetInfo` (the shapes the model was built for).
  """

  config: ml_collections.ConfigDict
  task: Any
  state: Any
  step: int
  info: data.DatasetInfo


def _config_path(path: str) -> str:
  return os.path.join(path, "config.json")


def saved_config(path: str) -> ml_collections.ConfigDict | None:
  """The config saved in run directory ``path`` (`config.load_json`), or None if it holds none."""
  return config_lib.load_json(_config_path(path)) if os.path.exists(_config_path(path)) else None


class Lock:
  """An exclusive lock on a run directory while a run uses it: ``WORKDIR/.lock``, an ``flock`` on an open file.

  The kernel drops it when the process ends, however it ends, so a crashed run leaves no stale lock.
  The file names the holder (pid, host, start time), for the error a second run gets.
  """

  def __init__(self, path: str):
    self._file = open(os.path.join(path, ".lock"), "a+")  # noqa: SIM115 - held open until release()
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise config_lib.ConfigError(
        f"--workdir={path} is in use by another run ({holder}): wait for it to end, or use another --workdir"
      ) from None
    self._file.seek(0)
    self._file.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    self._file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
    self._file.flush()

  def release(self) -> None:
    if not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()

  def __enter__(self) -> Lock:
    return self

  def __exit__(self, *exc: object) -> None:
    self.release()


def prepare(config: ml_collections.ConfigDict, path: str) -> contextlib.AbstractContextManager[Any]:
  """Creates ``path``, locks it (`Lock`, process 0) and saves ``config`` there; returns the lock, to release
  when the run ends. Refuses a directory that another run holds or that holds another config's checkpoint."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w"):
      pass
    os.remove(probe)
  except OSError as e:
    raise config_lib.ConfigError(f"--workdir={path} is not writable: {e.strerror}") from None
  lock = Lock(path) if jax.process_index() == 0 else contextlib.nullcontext()
  try:
    _check_and_save(config, path)
  except BaseException:
    lock.__exit__(None, None, None)
    raise
  return lock


def _check_and_save(config: ml_collections.ConfigDict, path: str) -> None:
  if checkpoint.latest_step(path) is not None:
    saved = saved_config(path)
    if saved is None:
      raise config_lib.ConfigError(f"--workdir={path} holds checkpoints but no config.json: use a new --workdir")
    diffs = config_lib.differences(saved, config)
    if diffs:
      raise config_lib.ConfigError(
        f"--workdir={path} holds a checkpoint of a different config ({'; '.join(diffs[:3])}): "
        "use a new --workdir, or the config it was trained with"
      )
  if jax.process_index() == 0:
    config_lib.save_json(config, _config_path(path))


def restore(config: ml_collections.ConfigDict, path: str, task: Any, command: str = "evaluate") -> Run:
  """The run in ``path``, trained by ``task`` (the module ``config.task`` names), at its latest checkpoint.

  ``config`` is the run's saved config with overrides of ``config.dataset.*`` only (which data to
  look at); anything else would not describe the checkpoint. ``command`` names the caller in errors.
  """
  config_lib.validate(config)
  step = checkpoint.latest_step(path)
  if step is None:
    raise config_lib.ConfigError(f"--workdir={path} has no checkpoint: train first")
  info = data.get_info(config.dataset, config.dataset.eval_split)
  saved = saved_config(path)
  if saved is None:
    raise config_lib.ConfigError(f"--workdir={path} has no config.json: not a training run directory")
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
  mngr = checkpoint.manager(path, config.keep_checkpoints)
  state = checkpoint.restore(mngr, step, template)
  mngr.close()
  return Run(config=config, task=task, state=state, step=step, info=train_info)
