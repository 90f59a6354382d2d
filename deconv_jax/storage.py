"""Where a run's files live: a local directory or a ``gs://`` URL, one set of functions for both.

Paths stay strings (what flags, configs and orbax take); every read and write of a run's files goes through
`etils.epath`, the path library orbax and TFDS use, on ``gs://`` through gcsfs (`_one_gcs_backend`). A ``gs://``
workdir or data_dir needs the ``[gcs]`` extra; checkpoints are written by orbax through tensorstore's own GCS
driver, and TFDS's array_record files are read by array_record's own (google-cloud-cpp).

What a kill at any moment leaves, per file kind:

* ``write_text``/``write_bytes`` replace a file whole: locally through a temporary file and a rename, on ``gs://``
  by one upload (an object appears whole when its upload completes, or not at all);
* objects cannot be appended to: `metric_writers` rewrites ``metrics.jsonl`` whole on ``gs://``.

A local path is never created from a URL: ``gs:/b``, ``gs:b`` or any other scheme is refused (`check`), so a
mistyped URL does not become a local directory named ``gs:``.

Pointing the clients at an emulator: ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` alone. gcsfs and
google-cloud-storage read it themselves; tensorstore reads ``TENSORSTORE_GCS_HTTP_URL`` and array_record
``CLOUD_STORAGE_EMULATOR_ENDPOINT``, set here from it, with the settings each client needs to reach an emulator
without credentials (`_point_clients_at_emulator`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from etils import epath

GCS_EXTRA = "pip install 'deconv_jax[gcs]'"
# Bucket names: 3-63 of lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
_GS_URL = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,61}[a-z0-9])(/.*)?")


class StorageError(ValueError):
  """A path or URL that cannot be used, or storage that cannot be reached: the message is one line."""


def _point_clients_at_emulator() -> None:
  """With ``STORAGE_EMULATOR_HOST`` set, what the other clients need to use that emulator, unless already set.

  tensorstore's GCS driver and google-cloud-cpp (array_record's reader of TFDS files) have their own endpoint
  variables; the emulator needs no credentials, so tensorstore takes a fixed token and gcsfs goes anonymous rather
  than searching for credentials (which asks the Compute Engine metadata server, off this machine); gcsfs's
  experimental bucket-type lookup (gRPC, which emulators do not serve) is retried for a minute, so it is turned
  off. fsspec reads its ``FSSPEC_*`` variables when it is imported; this runs when this module is imported, before
  anything of the project reads a ``gs://`` URL, and, called again later, has fsspec read them again.
  """
  host = os.environ.get("STORAGE_EMULATOR_HOST", "")
  if host:
    for name, value in emulator_settings(host).items():
      os.environ.setdefault(name, value)
    if "fsspec.config" in sys.modules:
      fsspec_config = sys.modules["fsspec.config"]
      fsspec_config.set_conf_env(fsspec_config.conf)


def emulator_settings(host: str) -> dict[str, str]:
  """The variables `_point_clients_at_emulator` derives from ``STORAGE_EMULATOR_HOST=host``."""
  url = host if "://" in host else f"http://{host}"
  return {
    "TENSORSTORE_GCS_HTTP_URL": url,
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    "FSSPEC_GCS_TOKEN": "anon",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
  }


_point_clients_at_emulator()


def _one_gcs_backend() -> None:
  """epath reads ``gs://`` through TensorFlow's GFile wherever TensorFlow is installed (Colab, the ``[prepare]``
  extra) and through gcsfs elsewhere. One client for every environment, gcsfs: the one the tests run against
  an emulator (TensorFlow's GCS filesystem cannot be pointed at one), and the one whose listings are kept fresh
  (`_no_listings_cache`). ``EPATH_USE_TF=true`` set by the user still wins. epath reads it once, at its first
  ``gs://`` path: this runs when this module is imported, before anything of the project makes one."""
  os.environ.setdefault("EPATH_USE_TF", "false")


_one_gcs_backend()


def _no_listings_cache() -> None:
  """gcsfs keeps the listings it reads and forgets them only on its own writes; orbax writes checkpoints through
  tensorstore, and other hosts write too, so a kept listing would show a checkpoint already set aside, or miss
  the newest. Every listing is read afresh (a few small requests per start-up and per save)."""
  import fsspec.config

  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


_no_listings_cache()


def is_gcs(path: str) -> bool:
  return str(path).startswith("gs://")


def check(path: str, what: str) -> None:
  """Refuses, in one line naming ``what`` (``--workdir``, a config key), a path that is neither local nor a
  well-formed ``gs://BUCKET/PATH`` URL, and a ``gs://`` URL where the ``[gcs]`` extra is not installed."""
  path = str(path)
  if path.startswith("gs:"):
    if not _GS_URL.fullmatch(path) or "//" in path[len("gs://") :]:
      raise StorageError(
        f"{what}={path}: not a gs:// URL of a bucket and a path: write gs://BUCKET/PATH (a bucket name is 3-63 "
        "lowercase letters, digits, '-', '_' or '.')"
      )
    try:
      _gcs_client_module()
    except StorageError as e:
      raise StorageError(f"{what}={path}: {e}") from None
  elif m := re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", path):
    scheme = m.group(1)
    raise StorageError(
      f"{what}={path}: {scheme!r} is not a place this code writes to: give a local path, or gs://BUCKET/PATH"
    )


def _gcs_client_module() -> Any:
  """google.cloud.storage (the lock and the bucket checks), and gcsfs (epath's ``gs://`` backend)."""
  try:
    import gcsfs  # noqa: F401 - epath's backend for gs:// (_one_gcs_backend)
    from google.cloud import storage as gcs
  except ImportError as e:
    raise StorageError(f"gs:// paths need the [gcs] extra ({e.name} is not installed): {GCS_EXTRA}") from None
  return gcs


def join(path: str, *names: str) -> str:
  return posixpath.join(path, *names) if is_gcs(path) else os.path.join(path, *names)


def absolute(path: str) -> str:
  """``path`` made absolute if it is local (orbax wants absolute paths); a URL as it is."""
  return path if is_gcs(path) else os.path.abspath(path)


def bucket_and_name(url: str) -> tuple[str, str]:
  bucket, _, name = url[len("gs://") :].partition("/")
  return bucket, name


def client() -> Any:
  """A google-cloud-storage client; `StorageError` if no credentials are found (none are needed by an emulator)."""
  gcs = _gcs_client_module()
  import google.auth.exceptions

  try:
    return gcs.Client()
  except google.auth.exceptions.DefaultCredentialsError:
    raise StorageError(
      "no Google Cloud credentials were found: run `gcloud auth application-default login` (in Colab: "
      "`google.colab.auth.authenticate_user()`), or set GOOGLE_APPLICATION_CREDENTIALS to a key file"
    ) from None


def check_reachable(path: str, what: str) -> None:
  """For a ``gs://`` path: credentials exist and its bucket exists and can be read; each failure one line that names
  ``what`` and the path. Nothing for a local path. Creates nothing (a missing bucket is never created)."""
  check(path, what)
  if not is_gcs(path):
    return
  from google.api_core import exceptions

  bucket, _ = bucket_and_name(path)
  try:
    found = client().lookup_bucket(bucket, timeout=30)
  except StorageError as e:
    raise StorageError(f"{what}={path}: {e}") from None
  except exceptions.Forbidden:
    raise StorageError(
      f"{what}={path}: these credentials may not read bucket {bucket}: use an account with access to it"
    ) from None
  except (exceptions.GoogleAPIError, OSError) as e:
    raise StorageError(f"{what}={path}: cannot reach Cloud Storage ({one_line(e)})") from None
  if found is None:
    raise StorageError(
      f"{what}={path}: bucket {bucket} does not exist: create it (gcloud storage buckets create gs://{bucket}) or "
      "fix the URL"
    )


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def isdir(path: str) -> bool:
  return epath.Path(path).is_dir()


def listdir(path: str) -> list[str]:
  """The names in directory ``path``; empty if there is none."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def files_under(path: str) -> list[str]:
  """Every file under directory ``path``, as a path relative to it, sorted; empty if there is none."""
  root = path.removeprefix("gs://").rstrip("/")
  found = []
  for directory, _, files in epath.Path(path).walk():
    directory = os.fspath(directory).removeprefix("gs://")  # fsspec's walk drops the scheme, GFile's keeps it
    found += [posixpath.join(directory, f)[len(root) + 1 :] for f in files]
  return sorted(found)


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def read_bytes(path: str) -> bytes:
  return epath.Path(path).read_bytes()


def makedirs(path: str) -> None:
  """A local directory and its parents; nothing on ``gs://``, where a directory is only a prefix of names."""
  if not is_gcs(path):
    os.makedirs(path, exist_ok=True)


def write_bytes(path: str, data: bytes) -> None:
  """Replaces ``path`` whole with ``data``: a kill at any moment leaves the old file or the new one."""
  if is_gcs(path):
    epath.Path(path).write_bytes(data)  # one upload: the object appears whole, or not at all
    return
  makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode())


def rmtree(path: str) -> None:
  p = epath.Path(path)
  if p.exists():
    p.rmtree()


def move(src: str, dst: str) -> None:
  """Moves file or directory ``src`` to ``dst``, replacing what is there (on ``gs://`` a copy of each object, then
  its removal: a kill in between leaves both, never neither)."""
  rmtree(dst)
  if is_gcs(src):
    for name in files_under(src):
      epath.Path(join(src, name)).copy(epath.Path(join(dst, name)))
    epath.Path(src).rmtree()
  else:
    makedirs(os.path.dirname(dst))
    os.replace(src, dst)


class Lease:
  """An exclusive lock held by one run on object ``url``, as a lease that the holder renews.

  Object storage has no ``flock`` and no process that the server sees die, so the lock is an object created with
  the precondition "does not exist" (``ifGenerationMatch=0``): of two runs, the server lets exactly one create
  it. The holder rewrites it every ``lease_s / 3`` seconds (the precondition now being its own last generation);
  a lock not rewritten for ``lease_s`` seconds (its holder was killed) is taken over by the next run, also under
  a generation precondition, so two runs never both take it. A run that ends, fails or is preempted deletes it.
  Staleness is judged by the object's update time (the server's clock) against this host's clock: hosts whose
  clocks differ by a good part of ``lease_s`` would misjudge it.
  """

  def __init__(
    self, url: str, holder: str, lease_s: float, refused: Callable[[str], Exception], log: Callable[[str], None]
  ):
    self._log = log
    self._lease_s = lease_s
    self._stop = threading.Event()
    from google.api_core import exceptions

    self._exceptions = exceptions
    bucket, name = bucket_and_name(url)
    self._blob = client().bucket(bucket).blob(name)
    self._body = json.dumps({"holder": holder, "lease_s": lease_s})
    try:
      self._generation = self._write(0)
    except exceptions.PreconditionFailed:
      self._generation = self._take_over_if_stale(refused)
    except exceptions.GoogleAPIError as e:  # Forbidden, most often: the credentials may not write there
      raise StorageError(f"{url} cannot be written ({one_line(e)})") from None
    self._renewer = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
    self._renewer.start()

  def _write(self, generation: int) -> int:
    self._blob.upload_from_string(self._body, content_type="application/json", if_generation_match=generation)
    return self._blob.generation

  def _take_over_if_stale(self, refused: Callable[[str], Exception]) -> int:
    blob = self._blob.bucket.get_blob(self._blob.name)
    if blob is None:  # released between our write and this read
      return self._write(0)
    try:
      held = json.loads(blob.download_as_bytes(if_generation_match=blob.generation))
      holder, lease_s = str(held["holder"]), float(held["lease_s"])
    except (ValueError, KeyError, TypeError, self._exceptions.PreconditionFailed):
      holder, lease_s = "another run", self._lease_s
    age = time.time() - blob.updated.timestamp()
    if age < lease_s:
      raise refused(f"{holder}; its lease was renewed {age:.0f} s ago and lapses {lease_s - age:.0f} s after that")
    self._log(f"taking over the lock of {holder}: not renewed for {age:.0f} s (its lease: {lease_s:.0f} s)")
    try:
      return self._write(blob.generation)
    except self._exceptions.PreconditionFailed:
      raise refused("a run that took over the same lapsed lock a moment ago") from None

  def _renew(self) -> None:
    while not self._stop.wait(self._lease_s / 3):
      try:
        self._generation = self._write(self._generation)
      except self._exceptions.PreconditionFailed:
        self._log(f"lost the workdir lock {self._blob.name}: another run took it after our lease lapsed")
        return
      except Exception as e:  # a network error: try again at the next renewal, while the lease lasts
        self._log(f"could not renew the workdir lock ({one_line(e)}); retrying")

  def release(self) -> None:
    if self._stop.is_set():
      return
    self._stop.set()
    self._renewer.join()
    with contextlib.suppress(self._exceptions.NotFound, self._exceptions.PreconditionFailed):
      self._blob.delete(if_generation_match=self._generation)


def one_line(e: BaseException) -> str:
  """An exception as one line, its type first: for the one-line errors of failed saves, restores and requests."""
  text = " ".join(str(e).split())
  if len(text) > 240:  # keep the start (what) and the end (why: "File too large", "No space left")
    text = f"{text[:120]} ... {text[-110:]}"
  return f"{type(e).__name__}: {text}"


def holder() -> str:
  """Who holds a lock: this process, its host and when it started."""
  return f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
