"""Checkpoints that nothing can damage: a truncated checkpoint, a full disk, a killed save."""

import glob
import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO
from test_train import SMALL, assert_trees_close, final_params, small_config

from deconv_jax import checkpoint, train
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
