"""Every mistake a user can make at the command line ends in one line on stderr and exit status 2."""

import os
import shutil

import pytest


def assert_one_line(result, start):
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert "Traceback" not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith(start), lines


def test_a_config_file_that_is_not_python(tmp_path, cli):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  result = cli("deconv_jax.train", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
  assert_one_line(result, f"error: --config={bad}: line 1: ")


def test_a_get_config_that_raises(tmp_path, cli):
  bad = tmp_path / "raises.py"
  bad.write_text("def get_config():\n  raise ValueError('no such experiment')\n")
  result = cli("deconv_jax.train", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
  assert_one_line(result, f"error: --config={bad}: cannot load the config (ValueError: no such experiment)")


@pytest.mark.parametrize(
  "override,message",
  [
    (
      "--config.batch_sizee=32",
      "unknown config key --config.batch_sizee: the config has no such key; did you mean --config.batch_size?",
    ),
    (
      "--config.model.featurs=(8,)",
      "unknown config key --config.model.featurs: the config has no such key; did you mean --config.model.features?",
    ),
  ],
)
def test_a_misspelt_key_is_named_with_the_real_one(tmp_path, cli, override, message):
  result = cli("deconv_jax.train", override, f"--workdir={tmp_path / 'w'}")
  assert_one_line(result, f"error: {message}")


def test_a_truncated_gzip_idx_file(tmp_path, cli, mnist_dir):
  shutil.copy(os.path.join(mnist_dir, "t10k-labels-idx1-ubyte.gz"), tmp_path)
  with open(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"), "rb") as f:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(f.read(100_000))
  args = ["--config.dataset.source=idx", f"--config.dataset.data_dir={tmp_path}", "--config.dataset.train_split=test"]
  result = cli("deconv_jax.train", *args, f"--workdir={tmp_path / 'w'}")
  assert_one_line(result, f"error: {tmp_path / 't10k-images-idx3-ubyte.gz'}: damaged gzip file (")


def test_a_batch_larger_than_the_training_split(tmp_path, cli):
  """Refused before anything is built: each batch would cycle the 4,500 embedded digits 22 times, and a step
  (and so a SIGTERM's wait) would take minutes."""
  result = cli("deconv_jax.train", "--config.batch_size=100000", f"--workdir={tmp_path / 'w'}")
  assert_one_line(
    result, "error: config.batch_size=100000 is larger than the 4500 examples of embedded:train: use at most 4500"
  )
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["deconv_jax.train", "deconv_jax.evaluate", "deconv_jax.visualize"])
@pytest.mark.parametrize("damage", ["truncated", "not an object"])
def test_a_damaged_config_json(tmp_path, cli, command, damage):
  """A config.json cut short (a full disk) or edited into something else: one line, for every command that
  reads it, and the file is left as it was for the user to look at."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  text = '{"batch_size": 32, "dataset": {"sou' if damage == "truncated" else "[1, 2]"
  (workdir / "config.json").write_text(text)
  result = cli(command, f"--workdir={workdir}")
  assert_one_line(result, f"error: --workdir={workdir}: config.json is damaged (")
  assert result.stderr.strip().splitlines()[-1].endswith("): restore it from a copy, or use a new --workdir")
  assert (workdir / "config.json").read_text() == text
