"""The run directory: every file a run writes is one `RunDir` names, and start-up reads the directory once."""

import copy
import os
import pathlib
import re
import shutil
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import test_data
import test_gan

from deconv_jax import checkpoint, data, tasks, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.config import ConfigError
from deconv_jax.workdir import RunDir


def tiny_gan(steps):
  c = test_gan.tiny_gan()
  c.num_train_steps = steps
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = c.sample_every_steps = 2
  c.optimizer.schedule = "constant"  # so that the run may be extended
  return c


def named_by(run_dir):
  """The entries of a run directory that `RunDir` names."""
  files = [run_dir.config, run_dir.checkpoints, run_dir.damaged_checkpoints, run_dir.metrics]
  files += [run_dir.tensorboard, run_dir.samples, run_dir.lock]
  return {os.path.basename(p) for p in files}


@pytest.mark.slow
def test_a_run_writes_only_what_its_run_dir_names(tmp_path):
  run_dir = RunDir(str(tmp_path / "run"))
  train.train_and_evaluate(tiny_gan(2), run_dir.path)
  entries = set(os.listdir(run_dir.path))
  assert entries <= named_by(run_dir), entries - named_by(run_dir)
  assert {"config.json", "checkpoints", "metrics.jsonl", "tensorboard", "samples"} <= entries
  assert os.listdir(run_dir.samples) == ["samples_000002.png"]
  found = run_dir.read()
  assert found.step == 2 and found.config.to_dict() == tiny_gan(2).to_dict()
  assert run_dir.figure("deconvnet_act1") == os.path.join(run_dir.path, "deconvnet_act1.png")


@pytest.mark.slow
def test_a_resume_reads_the_saved_config_and_the_latest_step_once(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_gan(2), workdir)
  calls = {"load_json": 0, "steps": 0}

  def counted(name, fn):
    def wrapper(*args, **kwargs):
      calls[name] += 1
      return fn(*args, **kwargs)

    return wrapper

  monkeypatch.setattr(config_lib, "load_json", counted("load_json", config_lib.load_json))
  monkeypatch.setattr(checkpoint, "steps", counted("steps", checkpoint.steps))
  train.train_and_evaluate(tiny_gan(4), workdir)
  assert calls == {"load_json": 1, "steps": 1}
  assert workdir_lib.RunDir(workdir).latest_step() == 4


# ---------------------------------------------------------------- the module itself, without a training run


def test_the_layout_is_the_one_the_module_documents():
  """Each file's name is the one the module docstring's table gives: notebooks, TensorBoard and people read them."""
  documented = {}
  for line in workdir_lib.__doc__.splitlines():
    if line.startswith("  ") and line.split():
      documented.setdefault(line.split()[0], line)
  run_dir = RunDir("/runs/a")
  named = {p[len("/runs/a/") :] for p in (run_dir.config, run_dir.metrics, run_dir.lock, run_dir.figure("<name>"))}
  named |= {p[len("/runs/a/") :] + "/" for p in (run_dir.checkpoints, run_dir.damaged_checkpoints)}
  named |= {p[len("/runs/a/") :] + "/" for p in (run_dir.tensorboard, run_dir.samples)}
  assert named == set(documented), documented
  assert run_dir.figure("deconvnet_act1") == "/runs/a/deconvnet_act1.png"
  assert RunDir("rel").checkpoints == os.path.join(os.getcwd(), "rel", "checkpoints")  # orbax wants it absolute


def test_a_second_lock_is_refused_naming_the_holder_until_the_first_is_released(tmp_path):
  path = str(tmp_path)
  with workdir_lib.Lock(path):
    holder = pathlib.Path(RunDir(path).lock).read_text()
    assert re.fullmatch(
      rf"pid {os.getpid()} on {re.escape(socket.gethostname())} since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\n", holder
    )
    message = (
      f"--workdir={path} is in use by another run ({holder.strip()}): wait for it to end, or use another --workdir"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
      workdir_lib.Lock(path)
  with workdir_lib.Lock(path) as again:  # released: the next run takes it, and writes itself in
    assert pathlib.Path(RunDir(path).lock).read_text().startswith(f"pid {os.getpid()} on ")
    again.release()
    again.release()  # twice is harmless: the run's exit stack may release after an error did
  with open(RunDir(path).lock, "w"):  # a holder that wrote nothing yet
    pass
  with workdir_lib.Lock(path):
    with open(RunDir(path).lock, "w"):
      pass
    with pytest.raises(ConfigError, match=r"is in use by another run \(another process\): "):
      workdir_lib.Lock(path)


def test_a_damaged_config_json_is_one_line_and_left_as_it_is(tmp_path):
  run_dir = RunDir(str(tmp_path))
  assert run_dir.saved_config() is None
  pathlib.Path(run_dir.config).write_text('{"seed": 1, "mod')
  message = (
    f"--workdir={tmp_path}: config.json is damaged (Unterminated string starting at: line 1 column 13 (char 12)): "
    "restore it from a copy, or use a new --workdir"
  )
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    run_dir.read()
  assert pathlib.Path(run_dir.config).read_text() == '{"seed": 1, "mod'


def test_prepare_saves_the_config_and_refuses_what_would_mix_two_runs(tmp_path):
  path = str(tmp_path / "new" / "run")
  config = config_lib.base()
  with workdir_lib.prepare(config, path):
    assert RunDir(path).saved_config().to_dict() == config.to_dict()
    with pytest.raises(ConfigError, match=r"is in use by another run"):
      workdir_lib.prepare(config, path)
  assert sorted(os.listdir(path)) == [".lock", "config.json"]  # the probe of writability is gone

  # checkpoints of another config: refused, naming the first differences, the saved config untouched
  other = config_lib.base()
  other.model.features, other.seed = (4,), 7
  found = workdir_lib.Found(config=config, step=20)
  message = (
    f"--workdir={path} holds a checkpoint of a different config (model.features: (32, 64, 128) != (4,); seed: 0 != 7): "
    "use a new --workdir, or the config it was trained with"
  )
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    workdir_lib.prepare(other, path, found)
  other.batch_size, other.model.dense = 8, (16,)  # four differences: the first three are named
  message = (
    f"--workdir={path} holds a checkpoint of a different config (batch_size: 32 != 8; model.dense: (512,) != (16,); "
    "model.features: (32, 64, 128) != (4,)): use a new --workdir, or the config it was trained with"
  )
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    workdir_lib.prepare(other, path, found)
  with workdir_lib.prepare(config, path, found):  # the same config resumes
    pass
  with workdir_lib.prepare(other, path, workdir_lib.Found(config=config, step=None)):  # no checkpoint: a new run
    assert RunDir(path).saved_config().seed == 7
  message = f"--workdir={path} holds checkpoints but no config.json: use a new --workdir"
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    workdir_lib.prepare(config, path, workdir_lib.Found(config=None, step=20))
  with workdir_lib.Lock(path):  # each refusal released the lock it took
    pass

  blocked = tmp_path / "file"
  blocked.write_text("")
  message = f"--workdir={blocked / 'run'} is not writable: Not a directory"
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    workdir_lib.prepare(config, str(blocked / "run"))


def test_restore_gives_the_latest_checkpoint_and_refuses_what_does_not_describe_it(classifier_run, tmp_path):
  workdir, _ = classifier_run
  saved = RunDir(workdir).saved_config()
  run = workdir_lib.restore(saved, workdir, tasks.get(saved.task))
  assert run.step == 60 and run.config is saved and run.task is tasks.get("classifier")
  assert run.info == data.get_info(saved.dataset, saved.dataset.train_split)
  on_disk = ocp.StandardCheckpointer().restore(os.path.join(RunDir(workdir).checkpoints, "60", "state"))
  for got, wanted in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(on_disk["params"]), strict=True):
    np.testing.assert_array_equal(got, wanted)

  other_split = copy.deepcopy(saved)
  other_split.dataset.eval_split = "train"  # another split to look at is allowed
  assert workdir_lib.restore(other_split, workdir, run.task).step == 60
  changed = copy.deepcopy(saved)
  changed.model.dense = (64,)
  message = (
    "visualize takes overrides of config.dataset.*, measure.* and eval_batch_size only; the run's config differs: "
    "model.dense: (32,) != (64,)"
  )
  with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
    workdir_lib.restore(changed, workdir, run.task, command="visualize")
  with pytest.raises(ConfigError, match=f"^{re.escape(message.replace('visualize', 'evaluate'))}$"):
    workdir_lib.restore(changed, workdir, run.task)  # the default names evaluate
  # other images to look at: refused when their shape or their classes are not those the model was trained on
  for hw, classes in [((28, 28), 4), ((5, 3), 10)]:
    data_dir = tmp_path / f"idx_{hw[0]}x{hw[1]}_{classes}"
    data_dir.mkdir()
    images = np.zeros((classes, *hw), np.uint8)
    test_data.write(data_dir / "t10k-images-idx3-ubyte", test_data.idx_bytes(images), gzipped=False)
    test_data.write(data_dir / "t10k-labels-idx1-ubyte", test_data.idx_bytes(np.arange(classes, dtype=np.uint8)), False)
    elsewhere = copy.deepcopy(saved)
    elsewhere.dataset.update(source="idx", data_dir=str(data_dir), eval_split="test")
    message = (
      f"config.dataset: idx:test has images {(*hw, 1)} and {classes} classes, the model was trained on (28, 28, 1) "
      "with 10"
    )
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
      workdir_lib.restore(elsewhere, workdir, run.task)
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged, ignore=shutil.ignore_patterns(".lock"))
  for f in (damaged / "checkpoints" / "60" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"")
  with pytest.raises(ConfigError) as info:
    workdir_lib.restore(saved, str(damaged), run.task)
  assert str(info.value).startswith(f"--workdir={damaged}: checkpoint 60 does not restore (")
  assert str(info.value).endswith("); training this workdir again moves it aside and resumes from the one before")
  for missing, message in [
    ("checkpoints", f"--workdir={tmp_path}/a has no checkpoint: train first"),
    ("config.json", f"--workdir={tmp_path}/b has no config.json: not a training run directory"),
  ]:
    copy_dir = tmp_path / ("a" if missing == "checkpoints" else "b")
    shutil.copytree(workdir, copy_dir, ignore=shutil.ignore_patterns(missing, ".lock"))
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
      workdir_lib.restore(saved, str(copy_dir), run.task)
