"""A run directory (``--workdir``): every file of a run, preparing it, and restoring the run it holds.

`RunDir` is the one place that knows a run directory's layout; every module reaches a run's files
through it:

  config.json            the config the run trained with
  checkpoints/           `checkpoint`'s orbax steps (state and data iterator)
  damaged_checkpoints/   checkpoints that failed to restore, set aside
  metrics.jsonl          one JSON record per logged step (`metric_writers`)
  tensorboard/           TensorBoard event files
  samples/               image grids written during training
  <name>.png             figures a command writes into the run (`visualize`)
  .lock                  held while a run trains in it (`Lock`)

``path`` is a local directory or a ``gs://`` URL (`storage`): every file above is read and written through
`storage` or orbax, so a run on a bucket holds the same files, and a URL that is not well formed is refused
before anything is written (never a local directory named ``gs:``).

`RunDir.read` reads what start-up needs (the saved config and the latest step) once; `prepare` makes
a directory ready for training; `restore` gives back what a finished or interrupted run left: its
config, task, latest train state, step and the training data's info.

The task is passed in, not looked up by name: the tasks themselves restore runs (the inversion
task reads a classifier run), so this module sits below them and imports none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from deconv_jax import checkpoint, data, storage
from deconv_jax import config as config_lib

# How long a lock on a bucket outlives a run killed without releasing it (`storage.Lease`): long enough that a
# slow renewal never lets another run in, short enough that a pod job restarted after a kill is not refused long.
LEASE_S_VARIABLE = "DECONV_JAX_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0


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


@dataclasses.dataclass(frozen=True)
class Found:
  """What a run directory holds at start-up: its saved config and its latest complete checkpoint's step."""

  config: ml_collections.ConfigDict | None
  step: int | None


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The files of the run in ``path``, by what they are (the module docstring lists them)."""

  path: str

  def __post_init__(self):
    storage.check(self.path, "--workdir")

  def _file(self, *names: str) -> str:
    return storage.join(self.path, *names)

  @property
  def config(self) -> str:
    return self._file("config.json")

  @property
  def checkpoints(self) -> str:
    return storage.join(storage.absolute(self.path), "checkpoints")  # orbax wants an absolute path

  @property
  def damaged_checkpoints(self) -> str:
    return self._file("damaged_checkpoints")

  @property
  def metrics(self) -> str:
    return self._file("metrics.jsonl")

  @property
  def tensorboard(self) -> str:
    return self._file("tensorboard")

  @property
  def samples(self) -> str:
    return self._file("samples")

  @property
  def lock(self) -> str:
    return self._file(".lock")

  def figure(self, name: str) -> str:
    """``<name>.png`` in the run directory."""
    return self._file(f"{name}.png")

  def saved_config(self) -> ml_collections.ConfigDict | None:
    """The config saved in the run (`config.load_json`), or None if it holds none.

    `config.save_json` replaces the file whole, so a run never leaves half of one; a damaged one (a full disk,
    a hand edit) is refused in one line rather than guessed at: the checkpoints need the exact config.
    """
    if not storage.exists(self.config):
      return None
    try:
      return config_lib.load_json(self.config)
    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
      raise config_lib.ConfigError(
        f"--workdir={self.path}: config.json is damaged ({e}): restore it from a copy, or use a new --workdir"
      ) from None

  def latest_step(self) -> int | None:
    """The latest complete checkpoint's step, or None; creates nothing."""
    return checkpoint.latest_step(self.checkpoints)

  def read(self) -> Found:
    """The saved config and the latest step, each read once, for everything start-up decides; first, for a
    ``gs://`` path, one line if its bucket cannot be reached (`storage.check_reachable`)."""
    storage.check_reachable(self.path, "--workdir")
    return Found(config=self.saved_config(), step=self.latest_step())


def saved_config(path: str) -> ml_collections.ConfigDict | None:
  """The config saved in run directory ``path``, or None if it holds none."""
  return RunDir(path).saved_config()


class Lock:
  """An exclusive lock on a run directory while a run uses it: ``WORKDIR/.lock``.

  Locally, an ``flock`` on an open file: the kernel drops it when the process ends, however it ends, so a
  crashed run leaves no stale lock. On ``gs://``, an object that one run creates and renews as a lease
  (`storage.Lease`, ``$DECONV_JAX_LOCK_LEASE_S`` seconds, default 60): a run killed without deleting it blocks
  the next one until its lease lapses. Either names the holder (pid, host, start time) for the error a
  second run gets.
  """

  def __init__(self, path: str, log: Callable[[str], None] = print):
    lock = RunDir(path).lock

    def refused(holder: str) -> config_lib.ConfigError:
      return config_lib.ConfigError(
        f"--workdir={path} is in use by another run ({holder}): wait for it to end, or use another --workdir"
      )

    self._lease = self._file = None
    if storage.is_gcs(path):
      lease_s = os.environ.get(LEASE_S_VARIABLE, "")
      try:
        lease_s = float(lease_s or DEFAULT_LEASE_S)
      except ValueError:
        raise config_lib.ConfigError(f"${LEASE_S_VARIABLE}={lease_s!r}: give the lease in seconds") from None
      try:
        self._lease = storage.Lease(lock, storage.holder(), lease_s, refused, log)
      except storage.StorageError as e:
        raise storage.StorageError(f"--workdir={path}: {e}") from None
      return
    self._file = open(lock, "a+")  # noqa: SIM115 - held open until release()
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise refused(holder) from None
    self._file.seek(0)
    self._file.truncate()
    self._file.write(storage.holder() + "\n")
    self._file.flush()

  def release(self) -> None:
    if self._lease is not None:
      self._lease.release()
    elif not self._file.closed:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()

  def __enter__(self) -> Lock:
    return self

  def __exit__(self, *exc: object) -> None:
    self.release()


def prepare(
  config: ml_collections.ConfigDict, path: str, found: Found | None = None
) -> contextlib.AbstractContextManager[Any]:
  """Creates ``path``, locks it (`Lock`, process 0) and saves ``config`` there; returns the lock, to release
  when the run ends. Refuses a directory that another run holds or that holds another config's checkpoint.
  ``found``: what `RunDir.read` found there, if the caller has read it already."""
  run_dir = RunDir(path)
  if not storage.is_gcs(path):  # a bucket's writability shows when the lock is written
    try:
      os.makedirs(path, exist_ok=True)
      probe = os.path.join(path, f".write_test.{os.getpid()}")
      with open(probe, "w"):
        pass
      os.remove(probe)
    except OSError as e:
      raise config_lib.ConfigError(f"--workdir={path} is not writable: {e.strerror}") from None
  lock = _lock_for_every_process(path)
  try:
    _check_and_save(config, run_dir, run_dir.read() if found is None else found)
  except BaseException:
    lock.__exit__(None, None, None)
    raise
  return lock


def _lock_for_every_process(path: str) -> contextlib.AbstractContextManager[Any]:
  """The lock, taken by process 0 for all the processes of the job (a pod's hosts share it); if process 0 is
  refused, every process stops with the same line rather than waiting for it in a collective."""
  refusal, lock = "", contextlib.nullcontext()
  if jax.process_index() == 0:
    try:
      lock = Lock(path)
    except (config_lib.ConfigError, storage.StorageError) as e:  # held by another run, or not writable
      refusal = str(e)
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(bool(refusal)))
    if refused and not refusal:
      refusal = f"--workdir={path} is in use by another run (process 0 was refused its lock)"
  if refusal:
    raise config_lib.ConfigError(refusal)
  return lock


def _check_and_save(config: ml_collections.ConfigDict, run_dir: RunDir, found: Found) -> None:
  path = run_dir.path
  if found.step is not None:
    if found.config is None:
      raise config_lib.ConfigError(f"--workdir={path} holds checkpoints but no config.json: use a new --workdir")
    diffs = config_lib.differences(found.config, config)
    if diffs:
      raise config_lib.ConfigError(
        f"--workdir={path} holds a checkpoint of a different config ({'; '.join(diffs[:3])}): "
        "use a new --workdir, or the config it was trained with"
      )
  if jax.process_index() == 0:
    config_lib.save_json(config, run_dir.config)


def restore(config: ml_collections.ConfigDict, path: str, task: Any, command: str = "evaluate") -> Run:
  """The run in ``path``, trained by ``task`` (the module ``config.task`` names), at its latest checkpoint.

  ``config`` is the run's saved config with overrides of ``config.dataset.*`` only (which data to
  look at); anything else would not describe the checkpoint. ``command`` names the caller in errors.
  """
  config_lib.validate(config)
  run_dir = RunDir(path)
  found = run_dir.read()
  step, saved = found.step, found.config
  if step is None:
    raise config_lib.ConfigError(f"--workdir={path} has no checkpoint: train first")
  info = data.get_info(config.dataset, config.dataset.eval_split)
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
  mngr = checkpoint.manager(run_dir.checkpoints, config.keep_checkpoints)
  try:
    state = checkpoint.restore(mngr, step, template)
  except Exception as e:  # orbax's errors for a truncated or emptied checkpoint are many, and deep
    # Read-only here: what is measured must be the latest step, so no earlier one is taken in its place.
    raise config_lib.ConfigError(
      f"--workdir={path}: checkpoint {step} does not restore ({checkpoint.one_line(e)}); training this workdir "
      "again moves it aside and resumes from the one before"
    ) from None
  finally:
    mngr.close()
  return Run(config=config, task=task, state=state, step=step, info=train_info)
