"""The run directory: every file a run writes is one `RunDir` names, and start-up reads the directory once."""

import os

import pytest
import test_gan

from deconv_jax import checkpoint, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
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
