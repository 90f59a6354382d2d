"""Checkpoints that nothing can damage: a truncated checkpoint, a full disk, a killed save."""

import glob
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import REPO
from test_train import SMALL, assert_trees_close, final_params, small_config

from deconv_jax import checkpoint, data, train
from deconv_jax.workdir import RunDir

ARGS = [*SMALL, "--config.log_every_steps=10", "--config.checkpoint_every_steps=20", "--config.eval_every_steps=20"]
ARGS += ["--config.optimizer.schedule=constant"]  # so that a run may be extended from 20 steps to 40


def truncate_largest_file(step_dir):
  files = [f for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True) if os.path.isfile(f)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  straight, damaged = str(tmp_path / "straight"), str(tmp_path / "damaged")
  train.train_and_evaluate(small_config(), straight)
  train.train_and_evaluate(small_config(), damaged)
  truncate_largest_file(os.path.join(damaged, "checkpoints", "40"))
  capsys.readouterr()
  train.train_and_evaluate(small_config(), damaged)
  out = capsys.readouterr().out
  assert "checkpoint 40 is damaged (" in out and "trying step 20" in out
  assert f"resumed from {damaged} at step 20" in out
  assert os.path.isdir(os.path.join(damaged, "damaged_checkpoints", "40"))  # kept aside for a person to look at
  (s1, p1), (s2, p2) = final_params(straight), final_params(damaged)
  assert s1 == s2 == 40
  assert_trees_close(p1, p2, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_no_usable_checkpoint_is_one_line(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli("deconv_jax.train", *ARGS, "--config.num_train_steps=20", f"--workdir={workdir}", check=True)
  truncate_largest_file(os.path.join(workdir, "checkpoints", "20"))
  result = cli("deconv_jax.train", *ARGS, "--config.num_train_steps=20", f"--workdir={workdir}")
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: no checkpoint in ")
  assert "could be restored (steps [20]" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_keeps_the_last_checkpoint(tmp_path, cli):
  workdir = str(tmp_path / "run")
  cli("deconv_jax.train", *ARGS, "--config.num_train_steps=20", f"--workdir={workdir}", check=True)

  # In the child: files may not grow past 8 KiB (EFBIG), as on a full disk; the dense layer alone is 51 KB.
  full_disk = (
    "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  args = ["-m", "deconv_jax.train", *ARGS, "--config.num_train_steps=40", f"--workdir={workdir}"]
  result = subprocess.run(
    [sys.executable, "-c", full_disk, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: saving the checkpoint of step 40 in ") and "of step 20 is intact" in last, last
  assert "Traceback" not in result.stderr
  assert checkpoint.steps(RunDir(workdir).checkpoints) == [20]
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*tmp*"))  # the failed save left nothing behind
  again = cli("deconv_jax.train", *ARGS, "--config.num_train_steps=40", f"--workdir={workdir}", check=True)
  assert f"resumed from {workdir} at step 20" in again.stdout and RunDir(workdir).latest_step() == 40


@pytest.mark.slow
def test_leftovers_of_a_killed_save_are_removed_at_start_up(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(small_config(num_train_steps=20), workdir)
  leftover = os.path.join(workdir, "checkpoints", "40.orbax-checkpoint-tmp-1234567")
  os.makedirs(os.path.join(leftover, "state"))
  assert checkpoint.steps(RunDir(workdir).checkpoints) == [20]  # orbax does not count a temporary directory
  train.train_and_evaluate(small_config(), workdir)
  assert not os.path.exists(leftover)
  assert checkpoint.steps(RunDir(workdir).checkpoints) == [20, 40]


def test_a_failed_save_is_removed_even_while_its_last_writes_land(tmp_path):
  # Orbax raises at the first failed write while others may still land: here a writer keeps adding files.
  leftover = tmp_path / "7.orbax-checkpoint-tmp" / "state.orbax-checkpoint-tmp" / "d"
  kept = tmp_path / "6"
  kept.mkdir()
  stop, writing = time.monotonic() + 0.5, threading.Event()

  def late_writes():
    i = 0
    while time.monotonic() < stop or not writing.is_set():
      try:
        leftover.mkdir(parents=True, exist_ok=True)
        (leftover / f"chunk{i}").write_bytes(b"x" * 1024)
      except OSError:  # the removal took the directory away mid-write: it races it on purpose
        continue
      writing.set()
      i += 1

  writer = threading.Thread(target=late_writes)
  writer.start()
  writing.wait()
  checkpoint.remove_failed_save(str(tmp_path), 7)
  writer.join()
  assert sorted(os.listdir(tmp_path)) == ["6"]


def test_removing_a_failed_save_waits_only_while_something_is_left(tmp_path, monkeypatch):
  """It returns once the leftovers stay gone, after one pause; with nothing to remove it does not wait out its
  patience (which a run would spend before its one-line error)."""
  pauses = []
  monkeypatch.setattr(checkpoint.time, "sleep", pauses.append)
  (tmp_path / "7.orbax-checkpoint-tmp-1" / "state").mkdir(parents=True)
  (tmp_path / "6").mkdir()
  checkpoint.remove_failed_save(str(tmp_path), 7, patience_s=0.5)
  assert sorted(os.listdir(tmp_path)) == ["6"] and len(pauses) == 1
  checkpoint.remove_failed_save(str(tmp_path), 8, patience_s=0.5)
  assert len(pauses) == 2


# ---------------------------------------------------------------- the module itself, without training


@pytest.fixture
def open_manager():
  """`checkpoint.manager`, closed when the test ends: an open manager's threads outlive the test, and their event
  loop, closed, warns in whichever test runs next."""
  opened = []

  def open_(directory, keep=3):
    opened.append(checkpoint.manager(directory, keep))
    return opened[-1]

  yield open_
  for mngr in opened:
    mngr.close()


def small_state(seed):
  return {"w": np.arange(6.0).reshape(2, 3) * seed, "step": np.int32(seed)}


def test_save_and_restore_a_state_and_the_data_iterators_position(tmp_path, open_manager):
  from test_data import numbered_source

  directory = str(tmp_path / "checkpoints")  # created by the manager
  mngr = open_manager(directory)
  loader = data.train_loader(numbered_source(40), global_batch_size=4, seed=0)
  iterator = iter(loader)
  [next(iterator) for _ in range(3)]
  checkpoint.save(mngr, 3, small_state(3), iterator)
  expected = next(iterator)["label"]
  checkpoint.save(mngr, 4, small_state(4), None)  # no iterator: the state alone
  assert checkpoint.steps(directory) == [3, 4] and checkpoint.latest_step(directory) == 4

  fresh = iter(data.train_loader(numbered_source(40), global_batch_size=4, seed=0))
  restored = checkpoint.restore(open_manager(directory), 3, small_state(0), fresh)
  np.testing.assert_array_equal(restored["w"], small_state(3)["w"])
  assert int(restored["step"]) == 3
  np.testing.assert_array_equal(next(fresh)["label"], expected)  # the iterator resumes where the save was
  state, step = checkpoint.restore_latest(open_manager(directory), small_state(0), damaged=str(tmp_path / "d"))
  assert step == 4 and int(state["step"]) == 4


# what killed saves leave: test_leftovers_of_a_killed_save_* and test_the_next_manager_removes_*
def test_the_manager_keeps_the_last_3_steps(tmp_path, open_manager):
  directory = str(tmp_path)
  mngr = open_manager(directory)
  for step in range(1, 6):
    checkpoint.save(mngr, step, small_state(step), None)
  assert checkpoint.steps(directory) == [3, 4, 5]
  assert checkpoint.steps(str(tmp_path / "nothing")) == [] and checkpoint.latest_step(str(tmp_path / "nothing")) is None


def test_a_failed_save_raises_one_line_naming_the_intact_checkpoint_and_leaves_nothing(tmp_path, open_manager):
  directory = str(tmp_path)
  mngr = open_manager(directory)
  checkpoint.save(mngr, 5, small_state(5), None)
  reason = "No space left on device: " + "x" * 300 + "\nwhile writing w"

  def failing_save(step, **kwargs):  # as orbax does: a temporary directory, then the write error
    os.makedirs(os.path.join(directory, f"{step}.orbax-checkpoint-tmp-99", "state"))
    raise OSError(reason)

  mngr.save = failing_save
  text = " ".join(reason.split())
  one_line = f"OSError: {text[:120]} ... {text[-110:]}"
  message = (
    f"saving the checkpoint of step 6 in {mngr.directory} failed ({one_line}); the checkpoint of step 5 is intact"
  )
  with pytest.raises(checkpoint.CheckpointError, match=f"^{re.escape(message)}$"):
    checkpoint.save(mngr, 6, small_state(6), None)
  assert sorted(os.listdir(directory)) == ["5"]
  fresh = open_manager(str(tmp_path / "empty"))
  fresh.save = failing_save
  with pytest.raises(checkpoint.CheckpointError, match=r"; no earlier checkpoint exists$"):
    checkpoint.save(fresh, 1, small_state(1), None)
  assert checkpoint.one_line(ValueError("short\n  and   spaced")) == "ValueError: short and spaced"
  whole = "x" * 240  # up to 240 characters a message is kept whole
  assert checkpoint.one_line(OSError(whole)) == f"OSError: {whole}"
  assert checkpoint.one_line(OSError(whole + "y")) == f"OSError: {'x' * 120} ... {'x' * 109}y"


def test_the_next_manager_removes_what_a_killed_save_left(tmp_path, open_manager):
  """The fast tier's view of a killed save: its temporary directory is not a step, and the next manager of the
  directory removes it by its first save (the slow test kills a real run)."""
  directory = str(tmp_path)
  checkpoint.save(open_manager(directory), 5, small_state(5), None)
  leftover = tmp_path / "6.orbax-checkpoint-tmp-1234567" / "state"
  leftover.mkdir(parents=True)
  assert checkpoint.steps(directory) == [5]
  checkpoint.save(open_manager(directory), 7, small_state(7), None)
  assert sorted(os.listdir(directory)) == ["5", "7"]


def test_restore_latest_sets_a_damaged_step_aside_and_takes_the_one_before(tmp_path, open_manager):
  """The fallback without a training run: each damaged step is said in one line and moved aside whole, the newest
  one that restores is returned, and when none does the error names them all."""
  directory, damaged = str(tmp_path / "checkpoints"), str(tmp_path / "damaged")
  mngr = open_manager(directory)
  for step in (1, 2, 3):
    checkpoint.save(mngr, step, small_state(step), None)
  assert checkpoint.restore_latest(open_manager(str(tmp_path / "none")), small_state(0), damaged=damaged) is None
  truncate_largest_file(os.path.join(directory, "3"))
  said, mngr = [], open_manager(directory)
  state, step = checkpoint.restore_latest(mngr, small_state(0), damaged=damaged, log=said.append)
  assert step == 2 and int(state["step"]) == 2
  np.testing.assert_array_equal(state["w"], small_state(2)["w"])
  assert len(said) == 1 and said[0].startswith("checkpoint 3 is damaged (")
  assert said[0].endswith(f"): moved to {os.path.join(damaged, '3')}; trying step 2")
  assert checkpoint.steps(directory) == [1, 2] and os.listdir(damaged) == ["3"]
  checkpoint.save(mngr, 3, small_state(30), None)  # the run goes on: its manager knows step 3 is gone
  assert checkpoint.steps(directory) == [1, 2, 3]
  assert int(checkpoint.restore(mngr, 3, small_state(0))["step"]) == 30
  shutil.rmtree(os.path.join(directory, "3"))

  for step in (1, 2):
    truncate_largest_file(os.path.join(directory, str(step)))
  said.clear()
  message = (
    f"no checkpoint in {directory} could be restored (steps [2, 1], now in {damaged}): run again to start from step 0"
  )
  with pytest.raises(checkpoint.CheckpointError, match=f"^{re.escape(message)}$"):
    checkpoint.restore_latest(open_manager(directory), small_state(0), damaged=damaged, log=said.append)
  assert [line.split(" (")[0] for line in said] == ["checkpoint 2 is damaged", "checkpoint 1 is damaged"]
  assert said[0].endswith("; trying step 1") and said[1].endswith("; no earlier checkpoint")
  assert checkpoint.steps(directory) == [] and sorted(os.listdir(damaged)) == ["1", "2", "3"]
