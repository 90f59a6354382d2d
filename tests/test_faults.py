"""Faults are features: preemption saves and exits 0, kills never damage a checkpoint, a workdir has one run."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, free_port
from test_train import SMALL, final_params, read_metrics, small_config

from deconv_jax import checkpoint, storage, train
from deconv_jax import config as config_lib
from deconv_jax.workdir import RunDir

ENV = dict(os.environ, JAX_PLATFORMS="cpu")
# Long enough to be interrupted; constant learning rate, checkpoints every 25 steps, augmented: its draws resume too.
LONG = [*SMALL, "--config.num_train_steps=300", "--config.checkpoint_every_steps=25", "--config.log_every_steps=25"]
LONG += ["--config.eval_every_steps=300", "--config.optimizer.schedule=constant", "--config.augment.max_shift=2"]


def start(workdir, *args):
  cmd = [sys.executable, "-m", "deconv_jax.train", *LONG, *args, f"--workdir={workdir}"]
  return subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read(path):
  with open(path) as f:
    return f.read()


def wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while not predicate() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  assert predicate(), "timed out"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """The parameters of the LONG run, never interrupted."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  proc = start(workdir)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  return final_params(workdir)


def assert_bitwise_equal(a, b):
  import jax

  jax.tree.map(np.testing.assert_array_equal, a, b)


def partial_saves(ckpt_dir):
  """The saves in progress (or cut short): orbax writes ``<step>.orbax-checkpoint-tmp-*``, then renames it."""
  return [d for d in os.listdir(ckpt_dir) if "orbax-checkpoint-tmp" in d] if os.path.isdir(ckpt_dir) else []


def stop_inside_a_save(proc, saving, timeout=120):
  """SIGSTOPs ``proc`` while it writes a checkpoint: when ``saving()`` says a save is in progress it stops the
  process, and returns if the save is still in progress, else lets it go on (SIGCONT) to the next save."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if saving():
      proc.send_signal(signal.SIGSTOP)
      if saving():
        return
      proc.send_signal(signal.SIGCONT)
    time.sleep(0.001)
  raise AssertionError("no save was caught in progress")


def kill_inside_a_save(proc, ckpt_dir):
  """SIGKILLs ``proc`` while it writes a checkpoint (a partial save in ``ckpt_dir``)."""
  stop_inside_a_save(proc, lambda: partial_saves(ckpt_dir))
  proc.kill()


@pytest.mark.slow
def test_signals_and_kills_at_random_moments_each_resume_from_a_complete_checkpoint_and_end_bitwise_equal(
  tmp_path, uninterrupted
):
  """SIGTERM, then SIGINT: each saves and exits 0. Then SIGKILL inside a save, and after random delays (saves every
  25 steps): nothing partial piles up. Each restart resumes from the last complete checkpoint; the end is the
  uninterrupted end."""
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  for sig in (signal.SIGTERM, signal.SIGINT):
    before = RunDir(workdir).latest_step()
    proc = start(workdir)
    wait_for(lambda before=before: RunDir(workdir).latest_step() != before, proc)  # it (restored and) went on
    saved = RunDir(workdir).latest_step()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    stopped = RunDir(workdir).latest_step()
    assert f"preempted at step {stopped}: its checkpoint is saved; run the same command to resume" in out
    assert saved < stopped < 300 and "Traceback" not in err
    assert before is None or f"resumed from {workdir} at step {before}" in out, out
  # The first kill lands inside a save, for certain; the others at random moments.
  before = RunDir(workdir).latest_step()
  proc = start(workdir)
  wait_for(lambda: RunDir(workdir).latest_step() != before, proc)  # it restored, cleared old partial saves, went on
  kill_inside_a_save(proc, ckpt_dir)
  out, _ = proc.communicate(timeout=60)
  assert f"resumed from {workdir} at step {before}" in out, out
  assert len(partial_saves(ckpt_dir)) == 1  # the save the kill interrupted
  rng = random.Random(0)
  for _ in range(4):
    before = RunDir(workdir).latest_step()
    proc = start(workdir)
    wait_for(lambda before=before: RunDir(workdir).latest_step() != before, proc)  # it restored and went on
    time.sleep(rng.uniform(0.0, 1.5))
    proc.kill()
    out, _ = proc.communicate(timeout=60)
    assert f"resumed from {workdir} at step {before}" in out, out
    assert len(partial_saves(ckpt_dir)) <= 1  # at most the save the kill interrupted
    if RunDir(workdir).latest_step() == 300:
      break
  last = start(workdir)
  out, err = last.communicate(timeout=300)
  assert last.returncode == 0, err
  assert not partial_saves(ckpt_dir)
  (s1, p1), (s2, p2) = uninterrupted, final_params(workdir)
  assert s1 == s2 == 300
  assert_bitwise_equal(p1, p2)
  steps = [r["step"] for r in read_metrics(workdir, "train")]
  assert steps == sorted(set(steps)), "metrics.jsonl repeats steps"


@pytest.mark.slow
def test_a_second_run_on_the_same_workdir_is_refused_at_once(tmp_path, cli):
  workdir = str(tmp_path / "run")
  first = start(workdir)
  try:
    wait_for(lambda: os.path.exists(os.path.join(workdir, "config.json")), first)
    config_before = read(os.path.join(workdir, "config.json"))
    t = time.time()
    second = cli("deconv_jax.train", *LONG, "--config.seed=7", f"--workdir={workdir}")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: --workdir={workdir} is in use by another run (pid {first.pid} on "), line
    assert time.time() - t < 60
    assert read(os.path.join(workdir, "config.json")) == config_before  # the first run's config stays
  finally:
    first.kill()
    first.communicate(timeout=60)
  # Killed, the first run holds nothing: the same command resumes.
  again = cli("deconv_jax.train", *LONG, "--config.num_train_steps=60", f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr


def test_a_resume_that_changes_a_cosine_schedule_is_refused(tmp_path):
  workdir = str(tmp_path / "run")
  c = small_config(**{"optimizer.schedule": "cosine", "num_train_steps": 20})
  train.train_and_evaluate(c, workdir)
  with pytest.raises(config_lib.ConfigError, match=r"config.num_train_steps: the run in .* has a cosine "):
    train.train_and_evaluate(small_config(**{"optimizer.schedule": "cosine", "num_train_steps": 40}), workdir)
  assert checkpoint.steps(RunDir(workdir).checkpoints) == [20]


@pytest.mark.parametrize(
  "split,from_step,message,kept",
  [
    ("train", 0, "train loss is nan at step 10: stopped; no checkpoint was saved", None),
    ("train", 25, "train loss is nan at step 30: stopped; the checkpoint of step 20 in {workdir} is kept", 20),
    pytest.param(
      "eval",
      0,
      "eval loss is inf at step 40: stopped; the checkpoint of step 20 in {workdir} is kept",
      20,
      marks=pytest.mark.slow,
    ),
  ],
  ids=["train_nan_at_once", "train_nan_from_step_25", "eval_inf"],
)
def test_non_finite_metrics_stop_the_run_and_keep_the_last_good_checkpoint(
  tmp_path, monkeypatch, split, from_step, message, kept
):
  """A NaN or infinite loss (injected here) stops the run, says what is kept, and saves nothing of its step."""
  from deconv_jax.tasks import classifier

  real_train, real_eval = classifier.train_step, classifier.eval_step

  def nan_train_loss(state, batch, rng, **kwargs):
    new_state, metrics = real_train(state, batch, rng, **kwargs)
    return new_state, {**metrics, "loss": jnp.where(state.step >= from_step, jnp.nan, metrics["loss"])}

  def infinite_eval_loss(state, batch, **kwargs):
    return {**real_eval(state, batch, **kwargs), "loss": jnp.inf}

  if split == "train":
    monkeypatch.setattr(classifier, "train_step", nan_train_loss)
  else:
    monkeypatch.setattr(classifier, "eval_step", infinite_eval_loss)
  workdir = str(tmp_path / "run")
  with pytest.raises(FloatingPointError, match=re.escape(message.format(workdir=workdir))):
    train.train_and_evaluate(small_config(), workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert (os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []) == ([] if kept is None else [str(kept)])
  assert RunDir(workdir).latest_step() == kept


def start_two(workdir, port, *args, env=None):
  env = dict(env or ENV, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  cmd = [sys.executable, "-m", "deconv_jax.train", *LONG, "--config.batch_size=64", *args, f"--workdir={workdir}"]
  return [
    subprocess.Popen(
      [*cmd, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


@pytest.fixture(scope="module")
def two_processes_uninterrupted(tmp_path_factory):
  """The parameters of the LONG run over two processes of two devices each, never interrupted."""
  workdir = str(tmp_path_factory.mktemp("two_processes"))
  procs = start_two(workdir, free_port())
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  assert "on 4 device(s)" in outputs[0][0] and "done:" in outputs[0][0]
  assert "step" not in outputs[1][0] and "done:" not in outputs[1][0]  # only process 0 reports
  data_dir = os.path.join(workdir, "checkpoints", "300", "data")
  assert sorted(os.listdir(data_dir)) == ["commit_success.txt", "process_0-of-2.json", "process_1-of-2.json"]
  return final_params(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "gs"])
def test_two_processes_agree_on_the_preempted_step_fall_back_together_and_resume_bitwise_equal(
  where, tmp_path, request, two_processes_uninterrupted
):
  """Two JAX processes of two CPU devices each on 127.0.0.1: one mesh of 4 devices, one checkpoint, on a local disk
  or a bucket. SIGTERM to one (a scheduler signals each host): both save the same step and exit 0. That step is
  then damaged where only process 1 reads it (its data iterator's file): both set it aside, process 0 moves it
  while process 1 waits, both resume from the step before, and the end is the uninterrupted end."""
  env = None
  if where == "gs":
    gcs = request.getfixturevalue("gcs")
    workdir, env = f"{gcs.bucket(f'two-{os.getpid()}')}/run", gcs.env
  else:
    workdir = str(tmp_path / "run")
  run = RunDir(workdir)
  procs = start_two(workdir, free_port(), env=env)
  try:
    wait_for(lambda: run.latest_step() is not None, procs[0])
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outputs
  stopped = run.latest_step()
  assert f"preempted at step {stopped}: its checkpoint is saved" in outputs[0][0] and stopped < 300
  before = checkpoint.steps(run.checkpoints)[-2]
  storage.write_text(storage.join(run.checkpoints, str(stopped), "data", "process_1-of-2.json"), '{"next_ind')
  procs = start_two(workdir, free_port(), env=env)
  outputs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outputs
  aside = storage.join(run.damaged_checkpoints, str(stopped))
  damaged = f"checkpoint {stopped} is damaged (ValueError: data/process_1-of-2.json: Unterminated string starting "
  assert f"{damaged}at: line 1 column 2 (char 1)): moved to {aside}; trying step {before}" in outputs[0][0]
  assert f"resumed from {workdir} at step {before}" in outputs[0][0]
  assert storage.exists(storage.join(aside, "data", "process_1-of-2.json"))
  (s1, p1), (s2, p2) = two_processes_uninterrupted, final_params(workdir)
  assert s1 == s2 == 300
  assert_bitwise_equal(p1, p2)
