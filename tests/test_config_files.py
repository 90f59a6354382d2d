"""Every config file loads and validates; the TFDS ones run a real step under tfds.testing.mock_data."""

import glob
import importlib.util
import os

import pytest
from conftest import REPO

from deconv_jax import config as config_lib
from deconv_jax import train

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_expected_configs_exist():
  names = {os.path.basename(p) for p in CONFIGS}
  assert {"quickstart.py", "mnist_classifier.py", "fashion_mnist_classifier.py", "cifar10_classifier.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_and_names_its_command(path):
  module = load(path)
  config_lib.validate(module.get_config())
  name = os.path.basename(path)
  assert f"configs/{name}" in module.__doc__, "every config's docstring holds the command that runs it"


def test_mnist_classifier_has_the_original_settings():
  c = load(os.path.join(REPO, "configs", "mnist_classifier.py")).get_config()
  assert (c.dataset.source, c.dataset.name, c.batch_size, c.num_epochs) == ("tfds", "mnist", 32, 10.0)
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.schedule) == ("adam", 1e-3, "constant")
  assert c.model == config_lib.base().model


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("mnist_classifier", (28, 28, 1)), ("cifar10_classifier", (32, 32, 3))])
def test_tfds_config_trains_under_mock_data(tmp_path, tfds, name, shape):
  """The flax-examples check: one real config, a few real steps, on mocked TFDS records."""
  c = load(os.path.join(REPO, "configs", f"{name}.py")).get_config()
  c.num_train_steps = 3
  c.batch_size = 8
  c.eval_batch_size = 8
  c.model.features = (8, 8, 8)
  c.model.dense = (16,)
  c.dataset.download = False  # the records are mocked: nothing to download (mock_data leaves it "not prepared")
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.train_and_evaluate(c, str(tmp_path))
  assert metrics["num_examples"] == 16
  assert 0.0 <= metrics["accuracy"] <= 1.0
  saved = config_lib.load_json(str(tmp_path / "config.json"))
  assert saved.dataset.name == c.dataset.name
