"""End-to-end training: loss falls, resume replays exactly, device layouts agree, bad input fails early and cleanly."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO, steps_over_processes
from test_gan import GAN_ARGS

from deconv_jax import config as config_lib
from deconv_jax import data, tasks, train
from deconv_jax import workdir as workdir_lib
from deconv_jax.workdir import RunDir

SMALL = ("--config.model.features=(8, 16)", "--config.model.dense=(32,)")


def small_config(**overrides):
  c = config_lib.base()
  c.model.features = (8, 16)
  c.model.dense = (32,)
  c.num_train_steps = 40
  c.log_every_steps = 10
  c.eval_every_steps = 40
  c.checkpoint_every_steps = 20
  c.augment.max_shift = 2.0
  c.augment.max_rotation = 10.0
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return c


# Runs argv[1:] on a 120-column pseudo-terminal and copies what it draws to stdout.
_PTY_RUN = """
import fcntl, os, pty, struct, sys, termios
pid, fd = pty.fork()
if pid == 0:
  os.execv(sys.argv[1], sys.argv[1:])
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
while True:
  try:
    chunk = os.read(fd, 4096)
  except OSError:
    break
  if not chunk:
    break
  sys.stdout.write(chunk.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def final_params(workdir):
  step = RunDir(workdir).latest_step()
  restored = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step), "state"))
  return step, restored["params"]


def read_metrics(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def assert_trees_close(a, b, **tol):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def test_training_reduces_loss_and_writes_outputs(tmp_path):
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(small_config(num_train_steps=60, eval_every_steps=60), workdir)
  train_rows = read_metrics(workdir, "train")
  assert [r["step"] for r in train_rows] == [10, 20, 30, 40, 50, 60]
  assert train_rows[-1]["loss"] < 0.75 * train_rows[0]["loss"]
  assert metrics["num_examples"] == 500 and metrics["accuracy"] > 0.3  # chance is 0.1
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert RunDir(workdir).latest_step() == 60
  assert config_lib.load_json(os.path.join(workdir, "config.json")).model.features == (8, 16)


@pytest.mark.slow
def test_resume_ends_where_an_uninterrupted_run_ends_and_drops_the_metrics_logged_after_its_checkpoint(tmp_path):
  straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
  train.train_and_evaluate(small_config(num_train_steps=60), straight)
  # Stop at step 40 (a checkpoint), then run the same config on to 60 in the same workdir.
  train.train_and_evaluate(small_config(), split)  # 40 steps, checkpoints at 20 and 40, logs every 10
  with open(os.path.join(split, "metrics.jsonl"), "a") as f:  # as if a run got to 50 and was killed at 55
    f.write(json.dumps({"step": 50, "split": "train", "loss": 1.0}) + "\n")
  train.train_and_evaluate(small_config(num_train_steps=60), split)
  (s1, p1), (s2, p2) = final_params(straight), final_params(split)
  assert s1 == s2 == 60
  assert_trees_close(p1, p2, rtol=1e-6, atol=1e-7)
  assert [r["step"] for r in read_metrics(split, "train")] == [10, 20, 30, 40, 50, 60]
  assert read_metrics(split, "train")[4]["loss"] != 1.0


def test_a_run_killed_while_it_appended_a_record_resumes(tmp_path, capsys):
  """The torn last line of ``metrics.jsonl`` is dropped with one line; the resumed run's records all parse."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(small_config(num_train_steps=20, eval_every_steps=20), workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"step": 21, "spl')  # killed in the middle of a record
  capsys.readouterr()
  train.train_and_evaluate(small_config(num_train_steps=30, eval_every_steps=20), workdir)
  out = capsys.readouterr().out
  assert "metrics.jsonl: dropped 1 line(s) that are not a whole record (a run killed while writing it)" in out
  assert [r["step"] for r in read_metrics(workdir, "train")] == [10, 20, 30]
  assert [r["step"] for r in read_metrics(workdir, "eval")] == [20, 30]


def test_a_complete_run_only_evaluates_and_says_so(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(small_config(num_train_steps=20, eval_every_steps=20), workdir)
  capsys.readouterr()
  again = train.train_and_evaluate(small_config(num_train_steps=20, eval_every_steps=20), workdir)
  out = capsys.readouterr().out
  assert f"already trained to step 20 of 20; evaluating {workdir}" in out
  assert "training classifier" not in out and "resumed from" not in out
  assert again == first
  assert [r["step"] for r in read_metrics(workdir, "eval")] == [20]  # no duplicate record


@pytest.mark.slow
def test_progress_on_a_terminal_is_a_live_bar(tmp_path):
  """Under a pseudo-terminal the run draws a tqdm bar; piped (every other test) it prints one-line records."""
  args = [sys.executable, "-m", "deconv_jax.train", *SMALL, f"--workdir={tmp_path / 'run'}"]
  args += ["--config.num_train_steps=30", "--config.log_every_steps=10", "--config.eval_every_steps=30"]
  out = subprocess.run(
    [sys.executable, "-c", _PTY_RUN, *args],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stdout + out.stderr
  screen = out.stdout.replace("\r", "\n")
  assert "30/30 [" in screen and "step/s" in screen  # the bar, with its rate
  assert "| ETA" not in screen  # the one-line records are for logs, not terminals
  assert "step 30/30 | eval validation" in screen and "done: classifier 30 steps" in screen


LAYOUT_ARGS = {
  "classifier": [
    *SMALL,
    "--config.num_train_steps=12",
    "--config.batch_size=64",
    "--config.augment.max_rotation=10",
    "--config.eval_batch_size=64",
    "--config.log_every_steps=4",
  ],
  "gan": GAN_ARGS,
}


@pytest.mark.slow
@pytest.mark.parametrize(
  "task,steps,tol",
  [
    ("classifier", 12, dict(rtol=1e-4, atol=1e-5)),  # measured: 3e-8 apart
    ("gan", 3, dict(rtol=2e-4, atol=2e-5)),
  ],
  ids=["classifier", "gan"],
)
def test_8_devices_give_the_1_device_parameters_and_so_does_pmap(tmp_path, cli, task, steps, tol):
  # Gradients, metrics and the GAN's batch-norm statistics are averaged over the devices, latents keyed by global
  # index: the same step.
  runs = {"one": (1, "shard_map"), "eight": (8, "shard_map"), "pmap": (8, "pmap")}
  params = {}
  for name, (devices, kind) in runs.items():
    workdir = str(tmp_path / name)
    result = cli(
      "deconv_jax.train", *LAYOUT_ARGS[task], f"--config.parallel={kind}", f"--workdir={workdir}", devices=devices
    )
    assert result.returncode == 0, result.stderr
    assert f"on {devices} device(s)" in result.stdout
    run = workdir_lib.restore(config_lib.load_json(os.path.join(workdir, "config.json")), workdir, tasks.get(task))
    assert run.step == steps
    params[name] = run.state.params
    if tasks.get(task).samples is not None:
      assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["samples_000002.png", "samples_000003.png"]
  assert_trees_close(params["one"], params["eight"], **tol)
  assert_trees_close(params["pmap"], params["eight"], rtol=0, atol=0)  # pmap is jit(shard_map): the same program
  evals = {name: read_metrics(str(tmp_path / name), "eval")[-1] for name in runs}
  assert {e["num_examples"] for e in evals.values()} == {500}
  if task == "classifier":
    np.testing.assert_allclose(evals["one"]["accuracy"], evals["eight"]["accuracy"], atol=2 / 500)


@pytest.mark.slow
def test_quickstart_on_1_and_2_devices_agrees_for_25_steps(tmp_path, cli):
  # The README's "Devices and hosts": 25 steps of configs/quickstart.py agree to 1e-6, or 1e-5 of a weight, on
  # every jax CI tests (the order of float32 sums, so the rounding, differs between XLA versions); by step 100
  # training has amplified the reduction-order rounding to 1.5e-2 in some weights.
  args = ["--config.num_train_steps=25", "--config.log_every_steps=25", "--config.eval_every_steps=25"]
  for devices in (1, 2):
    cli("deconv_jax.train", *args, f"--workdir={tmp_path / str(devices)}", devices=devices, check=True)
  (s1, p1), (s2, p2) = final_params(str(tmp_path / "1")), final_params(str(tmp_path / "2"))
  assert s1 == s2 == 25
  assert_trees_close(p1, p2, rtol=1e-5, atol=1e-6)


def test_batch_that_does_not_divide_over_devices_fails_clearly(tmp_path, cli):
  result = cli("deconv_jax.train", *SMALL, "--config.batch_size=12", f"--workdir={tmp_path}", devices=8)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: config.batch_size=12 does not divide over 8")


@pytest.mark.slow
@pytest.mark.parametrize("task,steps", [("classifier", 4), ("gan", 3)], ids=["classifier", "gan"])
def test_two_processes_of_2_devices_give_the_parameters_of_one_of_4(tmp_path, task, steps):
  one, two = steps_over_processes(tmp_path, task, steps)
  assert sorted(one) == sorted(two)
  # A generator's eval fakes come from each device's first latents: its sums depend on the layout, its count does not.
  layout_free = [k for k in one if tasks.get(task).generate_many is None or not k.startswith("eval_")]
  for key in layout_free:  # measured: 2e-8 (classifier), 1.2e-7 (gan) apart
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert two["eval_num_examples"] == one["eval_num_examples"] == 500


RECONSTRUCTION_METRICS = {"loss", "psnr", "ssim", "num_examples"}


@pytest.mark.slow
@pytest.mark.parametrize(
  "task,metric_names",
  [
    ("autoencoder", RECONSTRUCTION_METRICS),
    ("gan", {"d_loss", "d_real_accuracy", "d_fake_accuracy", "num_examples"}),
    ("inversion", RECONSTRUCTION_METRICS),
  ],
  ids=["autoencoder", "gan", "inversion"],
)
def test_tfds_config_of_each_task_trains_under_mock_data(tmp_path, tfds, classifier_run, task, metric_names):
  """`configs/{task}_tfds.py`, shrunk, a few real steps on mocked TFDS records (the classifier's: test_config_files)."""
  path = os.path.join(REPO, "configs", f"{task}_tfds.py")
  spec = importlib.util.spec_from_file_location(f"{task}_tfds", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  assert (c.dataset.source, c.dataset.name, c.task) == ("tfds", "mnist", task)
  c.num_train_steps, c.batch_size, c.eval_batch_size = 3, 8, 8
  c.autoencoder.features, c.autoencoder.latent_dim = (8, 8), 4
  c.generator.update(latent_dim=8, base_features=8, features=(8, 4))
  c.discriminator.features = (8, 8)
  c.inversion.classifier_workdir = classifier_run[0]  # trained on 28x28x1 digits, as the mocked MNIST
  c.dataset.download = False  # the records are mocked: nothing to download (mock_data leaves it "not prepared")
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.train_and_evaluate(c, str(tmp_path))
  assert set(metrics) == metric_names
  assert metrics["num_examples"] == 16 and all(np.isfinite(v) for v in metrics.values()), metrics
  if tasks.get(task).samples is not None:
    assert os.listdir(tmp_path / "samples") == ["samples_000003.png"]
  else:
    assert not (tmp_path / "samples").exists()


# ---------------------------------------------------------------- bad input


def _tree_digest(path):
  """Every file's name and bytes, but the lock file's: each run that locks the workdir writes its pid there."""
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(set(files) - {".lock"}):
      with open(os.path.join(root, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"model.padding": "FULL"}, "config.model.padding='FULL' is not allowed"),
    ({"model.features": (8, 8, 8, 8, 8)}, "config.model cannot take images of shape (28, 28, 1)"),
    ({"batch_size": 0}, "config.batch_size=0 is not allowed"),
    ({"dataset.source": "idx"}, "config.dataset.data_dir"),
    ({"dataset.train_split": "nope"}, "config.dataset.train_split='nope'"),
    ({"optimizer.name": "lion"}, "config.optimizer.name='lion'"),
  ],
)
def test_bad_config_is_rejected_before_any_work(tmp_path, overrides, message):
  workdir = tmp_path / "run"
  with pytest.raises((config_lib.ConfigError, data.DataError)) as info:
    train.train_and_evaluate(small_config(**overrides), str(workdir))
  assert message in str(info.value)
  assert "\n" not in str(info.value)
  assert not (workdir / "checkpoints").exists()


def test_unprepared_tfds_dataset_is_rejected_before_any_work(tmp_path, tfds):
  overrides = {"dataset.source": "tfds", "dataset.name": "cifar10", "dataset.data_dir": "/nonexistent"}
  overrides["dataset.download"] = False
  test_bad_config_is_rejected_before_any_work(tmp_path, overrides, "not prepared")


def test_unknown_key_in_a_config_file_is_rejected(tmp_path):
  c = small_config()
  c.model.widths = (1, 2)
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key config.model.widths; known keys here: "):
    train.train_and_evaluate(c, str(tmp_path))


def test_checkpoint_of_another_config_is_refused_and_left_intact(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(small_config(num_train_steps=20), workdir)
  before = _tree_digest(workdir)
  with pytest.raises(config_lib.ConfigError, match=r"holds a checkpoint of a different config \(model.dense"):
    train.train_and_evaluate(small_config(**{"model.dense": (64,)}), workdir)
  assert _tree_digest(workdir) == before


@pytest.mark.parametrize(
  "args,message",
  [
    (["--config.model.widths=3"], "error: unknown config key --config.model.widths"),
    (["--config.batch_size=abc"], "error: flag --config.batch_size=abc"),
    (["--config=configs/nope.py"], "error: --config=configs/nope.py: cannot load the config"),
    (["--config.model.features=(8,8,8,8,8)"], "error: config.model cannot take images of shape (28, 28, 1)"),
  ],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, cli, args, message):
  result = cli("deconv_jax.train", f"--workdir={tmp_path / 'run'}", *args)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_workdir_is_a_clear_error(tmp_path, cli):
  blocker = tmp_path / "file"
  blocker.write_text("")
  result = cli("deconv_jax.train", *SMALL, f"--workdir={blocker / 'run'}")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: --workdir={blocker / 'run'} is not writable")
