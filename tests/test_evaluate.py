"""``python -m deconv_jax.evaluate``: the saved config and latest checkpoint, any eval split, a JSON last line."""

import json

import pytest

from deconv_jax import config as config_lib
from deconv_jax import eval_loop


@pytest.fixture
def trained(classifier_run):
  return classifier_run


def last_json(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_evaluate_reproduces_the_final_eval_of_training(trained, cli):
  workdir, train_metrics = trained
  result = cli("deconv_jax.evaluate", f"--workdir={workdir}", check=True)
  metrics = last_json(result.stdout)
  assert metrics["step"] == 60
  assert metrics["num_examples"] == 500
  assert metrics["accuracy"] == pytest.approx(train_metrics["accuracy"])
  assert metrics["loss"] == pytest.approx(train_metrics["loss"], rel=1e-5)


@pytest.mark.slow
def test_evaluate_on_8_devices_matches_one(trained, cli):
  workdir, train_metrics = trained
  metrics = last_json(cli("deconv_jax.evaluate", f"--workdir={workdir}", devices=8, check=True).stdout)
  assert metrics["num_examples"] == 500
  assert metrics["accuracy"] == pytest.approx(train_metrics["accuracy"])


def test_evaluate_on_the_real_mnist_test_set(trained, cli, mnist_dir):
  workdir, _ = trained
  overrides = [
    "--config.dataset.source=idx",
    f"--config.dataset.data_dir={mnist_dir}",
    "--config.dataset.eval_split=test",
  ]
  metrics = last_json(cli("deconv_jax.evaluate", f"--workdir={workdir}", *overrides, check=True).stdout)
  assert metrics["num_examples"] == 10000
  assert 0.3 < metrics["accuracy"] <= 1.0  # 60 steps of a small CNN: far above chance, far from done


@pytest.mark.slow
def test_evaluate_errors_are_one_line(trained, cli, tmp_path):
  workdir, _ = trained
  cases = [
    ([f"--workdir={tmp_path}"], f"error: --workdir={tmp_path} has no config.json"),
    ([], "error: --workdir=DIR is required"),
    ([f"--workdir={workdir}", "--config.nope=1"], "error: unknown config key --config.nope"),
    ([f"--workdir={workdir}", "--config.dataset.eval_split=test"], "error: config.dataset.eval_split='test'"),
    ([f"--workdir={workdir}", "--config.model.dense=(64,)"], "error: evaluate takes overrides of config.dataset.*"),
  ]
  for args, message in cases:
    result = cli("deconv_jax.evaluate", *args)
    assert result.returncode == 2, (args, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr


def test_evaluating_on_images_of_another_shape_is_refused(trained, tfds):
  workdir, _ = trained
  c = config_lib.load_json(f"{workdir}/config.json")
  c.dataset.source = "tfds"
  c.dataset.name = "cifar10"
  c.dataset.eval_split = "test"
  with tfds.testing.mock_data(num_examples=4), pytest.raises(config_lib.ConfigError, match=r"\(32, 32, 3\)"):
    eval_loop.evaluate_workdir(c, workdir)
