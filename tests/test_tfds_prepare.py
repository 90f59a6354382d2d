"""TFDS datasets where the user has the internet: prepared on request, read from a bucket, refused fast offline.

The internet is stood in for by an HTTP server on 127.0.0.1 serving MNIST's four files (the real test set of
``../shared/data/mnist``; the training files are those 10,000 digits six times over, the 60,000 records TFDS's
MNIST generator reads): here they are fixtures, not a result. The `train` subprocesses reach it through a
``sitecustomize`` that points TFDS's MNIST builder at it, its URLs and their checksums, as a mirror would: the
rest (download, checksum validation, extraction, array_record writing, reading) is TFDS's and the project's own.
"""

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import MNIST_DIR, REPO, free_port, run_processes

from deconv_jax import config as config_lib
from deconv_jax import data, storage, tfds_prepare

MNIST_FILES = [f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")]

# Loaded by Python at start-up in the `train` subprocesses (PYTHONPATH): TFDS's MNIST downloads from MNIST_MIRROR,
# and checks each file against the checksums registered for it there (MNIST_MIRROR_CHECKSUMS, a JSON file).
SITECUSTOMIZE = """\
import json, os
from tensorflow_datasets.core.download import checksums
from tensorflow_datasets.image_classification import mnist

mnist.MNIST.URL = os.environ["MNIST_MIRROR"]
with open(os.environ["MNIST_MIRROR_CHECKSUMS"]) as f:
  mnist.MNIST.url_infos = {
    mnist.MNIST.URL + name: checksums.UrlInfo(size=size, checksum=sha256, filename=name)
    for name, (size, sha256) in json.load(f).items()
  }
"""


def _mnist_files(root):
  """The four gzipped IDX files TFDS's MNIST downloads, in ``root``; ``{name: (size, sha256)}``."""
  for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
    test = os.path.join(MNIST_DIR, f"t10k-{kind}-ubyte.gz")
    shutil.copy(test, root)
    with gzip.open(test) as f:
      raw = f.read()
    count = int.from_bytes(raw[4:8], "big")
    six_times = raw[:4] + (6 * count).to_bytes(4, "big") + raw[8:header] + 6 * raw[header:]
    with gzip.open(os.path.join(root, f"train-{kind}-ubyte.gz"), "wb", compresslevel=1) as f:
      f.write(six_times)
  return {name: _size_and_sha256(os.path.join(root, name)) for name in MNIST_FILES}


def _size_and_sha256(path):
  with open(path, "rb") as f:
    content = f.read()
  return len(content), hashlib.sha256(content).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
  daemon_threads = True
  requests_seen: list


class _Handler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):  # the requests are recorded, not printed
    self.server.requests_seen.append((self.command, self.path))


@contextlib.contextmanager
def serving(root):
  """An HTTP server of ``root`` on 127.0.0.1: its ``(url, requests_seen)``."""
  server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=root))
  server.requests_seen = []
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_port}/", server.requests_seen
  finally:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mirror_files(tmp_path_factory):
  """MNIST's files, and the ``sitecustomize`` directory and checksums that point TFDS at a mirror of them."""
  root = tmp_path_factory.mktemp("mnist_mirror")
  files = root / "files"
  files.mkdir()
  checksums = _mnist_files(str(files))
  (root / "checksums.json").write_text(json.dumps(checksums))
  (root / "hook").mkdir()
  (root / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
  return root


def _env(mirror_files, url, extra=None):
  env = dict(extra or os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(mirror_files / "hook"), REPO, env.get("PYTHONPATH")]))
  env.update(MNIST_MIRROR=url, MNIST_MIRROR_CHECKSUMS=str(mirror_files / "checksums.json"))
  return env


def command(module, *args, env, timeout=600):
  """``python -m MODULE --config configs/mnist_classifier.py ARGS``, shortened to a few steps (for `train`)."""
  short = ["--config.num_train_steps=3", "--config.log_every_steps=1", "--config.eval_every_steps=3"]
  short.append("--config.checkpoint_every_steps=3")
  argv = [sys.executable, "-m", module, "--config", "configs/mnist_classifier.py", *short, *args]
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train(*args, env):
  return command("deconv_jax.train", *args, env=env)


def _steps(workdir):
  records = [json.loads(line) for line in storage.read_text(os.path.join(workdir, "metrics.jsonl")).splitlines()]
  return sorted({r["step"] for r in records})


def _label_counts(tfds, data_dir, split):
  source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False, try_gcs=False)
  return np.bincount([int(source[i]["label"]) for i in range(len(source))], minlength=10)


@pytest.mark.slow
def test_train_downloads_and_prepares_mnist_then_a_pod_reads_it_from_a_bucket(tfds, mirror_files, gcs, tmp_path):
  """`train` with the default ``download=True`` on a fresh data_dir: MNIST is downloaded from the mirror (each file
  once, checked against its checksum) and prepared in array_record, then trained on; the `prepare` command finds
  it and downloads nothing. Then the prepared test split, copied into a bucket, is trained on from ``gs://``."""
  pytest.importorskip("tensorflow", reason="preparing needs the [prepare] extra")
  data_dir = tmp_path / "tensorflow_datasets"
  with serving(str(mirror_files / "files")) as (url, seen):
    env = _env(mirror_files, url)
    first = train(f"--workdir={tmp_path / 'one'}", f"--config.dataset.data_dir={data_dir}", env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"preparing TFDS 'mnist' in config.dataset.data_dir='{data_dir}'" in first.stdout
    assert sorted(path for command, path in seen if command == "GET") == sorted(f"/{n}" for n in MNIST_FILES)
    assert sorted(path for command, path in seen if command == "HEAD") == ["/t10k-images-idx3-ubyte.gz"]
    assert _steps(tmp_path / "one") == [1, 2, 3]

    seen.clear()  # Prepared once: what finds it there downloads nothing.
    again = command("deconv_jax.prepare", f"--config.dataset.data_dir={data_dir}", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.splitlines()[-1] == f"mnist is prepared in {data_dir}/mnist/3.0.1 (splits: test, train)"
    assert seen == []
  # What was prepared is what was served: the test set's labels, and six times them for training.
  with gzip.open(os.path.join(MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as f:
    served = np.bincount(np.frombuffer(f.read()[8:], np.uint8), minlength=10)
  assert (_label_counts(tfds, str(data_dir), "test") == served).all()
  assert (_label_counts(tfds, str(data_dir), "train") == 6 * served).all()

  # A pod's hosts share the prepared dataset through a bucket (here only the test split and its metadata).
  bucket = gcs.bucket("tfds-data")
  prepared = data_dir / "mnist" / "3.0.1"
  for name in ("dataset_info.json", "features.json", "mnist-test.array_record-00000-of-00001"):
    storage.write_bytes(f"{bucket}/tfds/mnist/3.0.1/{name}", (prepared / name).read_bytes())
  shutil.rmtree(data_dir)  # it can only come from the bucket
  from_bucket = train(
    f"--workdir={tmp_path / 'three'}",
    f"--config.dataset.data_dir={bucket}/tfds",
    "--config.dataset.download=false",
    "--config.dataset.train_split=test[:90%]",
    "--config.dataset.eval_split=test[90%:]",
    env=_env(mirror_files, "http://127.0.0.1:1/", gcs.env),  # no mirror: nothing may be downloaded
  )
  assert from_bucket.returncode == 0, from_bucket.stderr[-3000:]
  assert _steps(tmp_path / "three") == [1, 2, 3] and not data_dir.exists()


@pytest.mark.slow
def test_offline_the_download_is_refused_within_seconds_in_one_line(tfds, mirror_files, tmp_path):
  """A host that cannot be reached (here nothing listens on its port) is named in one line, at once: TFDS's own
  downloader would retry it for minutes. With ``download=false`` the host is not asked; the line says how to get
  the dataset. Neither creates anything."""
  pytest.importorskip("tensorflow", reason="preparing needs the [prepare] extra")
  host = f"127.0.0.1:{free_port()}"
  data_dir = tmp_path / "data"
  without = (
    "prepare it on a machine that has it (`python -m deconv_jax.prepare` with this config and "
    "--config.dataset.data_dir=DIR), copy DIR here and pass --config.dataset.data_dir=DIR, or use "
    "--config.dataset.source=embedded"
  )
  refused = f" and cannot be downloaded: {host} refused the connection. Without the internet, {without}"
  cases = [
    ("deconv_jax.train", "true", refused),
    ("deconv_jax.prepare", "false", refused),  # the command prepares whatever download says
    (
      "deconv_jax.train",
      "false",
      ": with the internet, `train` with --config.dataset.download=true downloads and prepares it (pip install "
      f"'deconv_jax[prepare]'); without, {without} (or idx)",
    ),
  ]
  for module, download, says in cases:
    start = time.monotonic()
    result = command(
      module,
      *([f"--workdir={tmp_path / 'run'}"] if module == "deconv_jax.train" else []),
      f"--config.dataset.data_dir={data_dir}",
      f"--config.dataset.download={download}",
      env=_env(mirror_files, f"http://{host}/"),
    )
    elapsed = time.monotonic() - start
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines == [
      f"error: config.dataset.name='mnist' is not prepared in config.dataset.data_dir='{data_dir}'{says}"
    ], (module, download, result.stderr[-3000:])
    # Interpreter and imports take seconds; TFDS's retries of an unreachable host take minutes.
    assert elapsed < 60, elapsed
  assert not data_dir.exists() and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_over_two_processes_a_download_refused_on_process_0_stops_both_in_one_line(
  tfds, mirror_files, tmp_path, monkeypatch
):
  """JAX's own collectives, over loopback: process 1 does not wait for a dataset process 0 cannot prepare."""
  pytest.importorskip("tensorflow", reason="preparing needs the [prepare] extra")
  host = f"127.0.0.1:{free_port()}"
  for name, value in _env(mirror_files, f"http://{host}/").items():
    monkeypatch.setenv(name, value)
  argv = ["-m", "deconv_jax.train", "--config", "configs/mnist_classifier.py", f"--workdir={tmp_path / 'run'}"]
  argv += [f"--config.dataset.data_dir={tmp_path / 'data'}", f"--coordinator_address=127.0.0.1:{free_port()}"]
  codes, outputs = run_processes([[*argv, "--num_processes=2", f"--process_id={i}"] for i in range(2)], devices=1)
  assert codes == [2, 2], outputs
  errors = [[line for line in err.splitlines() if line.startswith("error: ")] for _, err in outputs]
  assert errors == [
    [
      f"error: config.dataset.name='mnist' is not prepared in config.dataset.data_dir='{tmp_path / 'data'}' and "
      f"cannot be downloaded: {host} refused the connection. Without the internet, prepare it on a machine that has "
      "it (`python -m deconv_jax.prepare` with this config and --config.dataset.data_dir=DIR), copy DIR here and pass "
      "--config.dataset.data_dir=DIR, or use --config.dataset.source=embedded"
    ],
    ["error: config.dataset.name='mnist' could not be prepared on process 0: its output says why"],
  ], outputs


class _Builder:
  """What `tfds_prepare` reads of a TFDS builder to check its hosts: the URLs its checksums register."""

  def __init__(self, *urls):
    self.url_infos = dict.fromkeys(urls)


def test_a_host_that_accepts_but_never_answers_is_given_up_on_in_time(monkeypatch):
  monkeypatch.setattr(tfds_prepare, "REACH_TIMEOUT_S", 0.5)
  with socket.socket() as silent:  # the kernel accepts connections to it; nothing ever answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    cfg = config_lib.base().dataset
    start = time.monotonic()
    with pytest.raises(
      data.DataError, match=rf"cannot be downloaded: 127\.0\.0\.1:{port} did not answer within 0\.5 s"
    ):
      tfds_prepare._check_reachable(cfg, _Builder(f"http://127.0.0.1:{port}/a.gz", f"http://127.0.0.1:{port}/b.gz"))
    assert time.monotonic() - start < 5


def test_each_host_is_asked_once():
  builder = _Builder("https://a.example/x/1.gz", "https://a.example/x/2.gz", "http://b.example:8080/3.tar", "ftp://c/4")
  assert tfds_prepare.hosts_of(builder) == {
    "a.example": "https://a.example/x/1.gz",
    "b.example:8080": "http://b.example:8080/3.tar",
  }


def test_preparing_without_the_extra_names_it_in_one_line(tfds, tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_prepare, "_NEEDED", ("tensorflow", "a_module_that_is_not_installed"))
  cfg = config_lib.base().dataset
  cfg.source, cfg.data_dir = "tfds", str(tmp_path)
  with pytest.raises(data.DataError) as e:
    tfds_prepare.prepare(cfg)
  assert str(e.value) == (
    "config.dataset.name='mnist' is not prepared and preparing it needs a_module_that_is_not_installed (TFDS "
    "extracts and encodes with TensorFlow), not installed here: pip install 'deconv_jax[prepare]', or set "
    "--config.dataset.download=false and give a --config.dataset.data_dir where it is prepared"
  )


def test_nothing_is_prepared_for_other_sources_or_when_download_is_off(tfds, tmp_path, monkeypatch):
  monkeypatch.setattr(tfds_prepare, "_prepare_if_missing", lambda *a: pytest.fail("prepared"))
  cfg = config_lib.base().dataset
  tfds_prepare.prepare(cfg)  # embedded
  cfg.source, cfg.data_dir, cfg.download = "tfds", str(tmp_path), False
  tfds_prepare.prepare(cfg)


def test_a_data_dir_url_is_checked_under_its_key_before_tfds_sees_it(tfds):
  cfg = config_lib.base().dataset
  cfg.source, cfg.data_dir = "tfds", "gs:/bucket/tfds"
  with pytest.raises(data.DataError, match=r"^config\.dataset\.data_dir=gs:/bucket/tfds: not a gs:// URL"):
    data.get_source(cfg, "train")
  cfg.source = "idx"
  with pytest.raises(data.DataError, match=r"^config\.dataset\.data_dir='gs:/bucket/tfds': source 'idx' reads a local"):
    data.get_source(cfg, "train")


def test_a_data_dir_bucket_that_does_not_exist_is_one_line(tfds, gcs):
  cfg = config_lib.base().dataset
  cfg.source, cfg.data_dir = "tfds", "gs://no-such-data-bucket/tfds"
  with pytest.raises(data.DataError) as e:
    data.get_source(cfg, "train")
  assert str(e.value).startswith(
    "config.dataset.data_dir=gs://no-such-data-bucket/tfds: bucket no-such-data-bucket does not exist"
  )


@pytest.mark.parametrize(
  "index, fails, gathered, turns, says",
  [
    (0, False, [[0, 0], [0, 0]], [0], None),  # process 0 prepares first, before any collective
    (1, False, [[0, 0], [0, 0]], [1], None),  # the others after the first, finding a shared directory prepared
    (1, False, [[1, 0]], [], "could not be prepared on process 0: its output says why"),  # not after it failed
    (0, False, [[0, 0], [0, 1]], [0], "could not be prepared on process 1: its output says why"),  # all stop
    (1, True, [[0, 0], [0, 1]], [1], "^offline here$"),  # and the process that failed says why
  ],
)
def test_over_processes_process_0_prepares_first_and_a_failure_stops_them_all(
  monkeypatch, index, fails, gathered, turns, says
):
  """The order and the agreement of `prepare` over two processes, seen from one; the collectives stand in for
  JAX's (each returns what both processes contributed), and each of them must be entered on every process."""
  prepared_after, collectives = [], []

  def prepare_if_missing(cfg, log):
    prepared_after.append(len(collectives))  # how many collectives came before: 0 = the first turn
    if fails:
      raise data.DataError("offline here")

  def process_allgather(flag):
    collectives.append(int(flag))
    return np.array(gathered[len(collectives) - 1])

  monkeypatch.setattr(tfds_prepare, "_prepare_if_missing", prepare_if_missing)
  monkeypatch.setattr(tfds_prepare.jax, "process_count", lambda: 2)
  monkeypatch.setattr(tfds_prepare.jax, "process_index", lambda: index)
  monkeypatch.setattr(tfds_prepare.multihost_utils, "process_allgather", process_allgather)
  cfg = config_lib.base().dataset
  cfg.source = "tfds"
  with contextlib.nullcontext() if says is None else pytest.raises(data.DataError, match=says):
    tfds_prepare.prepare(cfg)
  assert prepared_after == turns
  assert len(collectives) == len(gathered)  # the same number on every process
  assert collectives == [row[index] for row in gathered]  # each says this process's own outcome
