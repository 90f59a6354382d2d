"""Test-wide settings: CPU only, and hypothesis profiles sized for a 2-core machine.

Tests that need several devices run a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax is imported there).
"""

import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hypothesis
import pytest

hypothesis.settings.register_profile("ci", deadline=None, print_blob=True, derandomize=True)
hypothesis.settings.register_profile("dev", deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist")


def run_module(module: str, *args: str, devices: int = 1, timeout: int = 300, check: bool = False):
  """Runs ``python -m module args`` in a fresh process with ``devices`` CPU devices; returns CompletedProcess."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run(
    [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )
  if check and result.returncode != 0:
    raise AssertionError(f"{module} {args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
  return result


@pytest.fixture
def cli():
  """`run_module`: ``cli("deconv_jax.train", "--workdir", d, devices=8)``."""
  return run_module


@pytest.fixture
def mnist_dir():
  """The real MNIST test set beside the repo (../shared/data/mnist); skips when absent."""
  if not os.path.exists(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")):
    pytest.skip(f"real MNIST test set not found at {MNIST_DIR}")
  return MNIST_DIR


@pytest.fixture(scope="session")
def classifier_run(tmp_path_factory):
  """A tiny classifier (conv 8-16, dense 32) trained 60 steps on MNIST-5k: ``(workdir, final eval metrics)``.

  Shared by the tests of everything that reads a classifier run (evaluate, visualize,
  measurements, inversion); they only read it, or add their own files beside its checkpoints.
  """
  from deconv_jax import config as config_lib
  from deconv_jax import train

  workdir = str(tmp_path_factory.mktemp("classifier_run"))
  c = config_lib.base()
  c.model.features = (8, 16)
  c.model.dense = (32,)
  c.num_train_steps = 60
  c.eval_every_steps = 60
  return workdir, train.train_and_evaluate(c, workdir)
