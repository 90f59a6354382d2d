"""Getting a TFDS dataset onto disk: downloaded and prepared on request, quickly or not at all.

`prepare` runs before a run reads its data. With ``config.dataset.download`` (default True, as TFDS's own
``tfds.load``), a dataset that ``config.dataset.data_dir`` does not hold yet is downloaded and prepared there by
TFDS, in array_record, the format `tfds.data_source` reads at random; one already there is read as it is, and
nothing touches the network. With ``download=False`` a missing dataset is a one-line error (`data`).

Preparing needs what TFDS needs to generate a dataset: TensorFlow (TFDS extracts the archives with
``tf.io.gfile`` and encodes the images with ``tf.image``) and importlib_resources (which TFDS imports but does not
declare): the ``[prepare]`` extra. Reading a prepared dataset needs neither.

Before anything is downloaded, each host the dataset's registered URLs name is asked once, and must answer within
`REACH_TIMEOUT_S`: TFDS's own downloader retries a host it cannot reach for minutes (ten tries, the waits
doubling), which is what a machine without the internet would otherwise see. A dataset that registers no URLs
is downloaded without that check.
"""

from __future__ import annotations

import importlib.util
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from deconv_jax import data

REACH_TIMEOUT_S = 10.0  # per host; an answering host replies in well under a second
_NEEDED = ("tensorflow", "importlib_resources")  # modules TFDS needs to generate a dataset


def prepare(dataset_cfg: Any, log: Callable[[str], None] = print) -> None:
  """Downloads and prepares the TFDS dataset of ``dataset_cfg`` where it is missing and ``download`` is set.

  Nothing for other sources, for ``download=False``, or for a dataset already prepared. Over several processes
  (a pod's hosts), process 0 prepares first, so a ``data_dir`` they share (a bucket) is prepared once; then any
  process whose ``data_dir`` still lacks it (a directory local to its host) prepares its own. A failure on any
  process stops every process with a one-line `data.DataError`, instead of leaving the others in a collective.

  Raises:
    data.DataError: the dataset cannot be prepared here (extra missing, host unreachable, TFDS failed).
  """
  if dataset_cfg.source != "tfds" or not dataset_cfg.download:
    return
  if jax.process_count() == 1:
    _prepare_if_missing(dataset_cfg, log)
    return
  for turn in ("first", "then"):  # process 0 first, then the others
    error = ""
    if (jax.process_index() == 0) == (turn == "first"):
      try:
        _prepare_if_missing(dataset_cfg, log)
      except data.DataError as e:
        error = str(e)
    failed = multihost_utils.process_allgather(np.int32(bool(error)))
    if np.any(failed):
      raise data.DataError(
        error
        or f"config.dataset.name={dataset_cfg.name!r} could not be prepared on process "
        f"{int(np.argmax(failed))}: its output says why"
      )


def _prepare_if_missing(cfg: Any, log: Callable[[str], None]) -> None:
  builder = data.tfds_builder(cfg, file_format="array_record")
  if data.is_prepared(builder):
    return
  _check_installed(cfg)
  hosts = _check_reachable(cfg, builder)
  log(
    f"preparing TFDS {cfg.name!r} in {data.where(cfg)}, downloading from {', '.join(hosts) or 'its sources'} "
    "(once: later runs read it)"
  )
  tfds = data.import_tfds()
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except Exception as e:  # TFDS's errors are of many types; each is one line here.
    raise data.DataError(
      f"config.dataset.name={cfg.name!r} could not be downloaded and prepared in {data.where(cfg)} "
      f"({type(e).__name__}: {_first_line(e)})"
    ) from e


def _check_installed(cfg: Any) -> None:
  missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
  if missing:
    raise data.DataError(
      f"config.dataset.name={cfg.name!r} is not prepared and preparing it needs {' and '.join(missing)} (TFDS "
      f"extracts and encodes with TensorFlow), not installed here: {data.PREPARE_EXTRA}, or set "
      "--config.dataset.download=false and give a --config.dataset.data_dir where it is prepared"
    )


def hosts_of(builder: Any) -> dict[str, str]:
  """``{host: one of its URLs}`` for the hosts the dataset downloads from, as its registered checksums list them."""
  hosts: dict[str, str] = {}
  for url in sorted(builder.url_infos or {}):
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https"):
      hosts.setdefault(parts.netloc, url)
  return hosts


def _check_reachable(cfg: Any, builder: Any) -> list[str]:
  """Asks each host (``HEAD`` one of its URLs, through any proxy the environment names) and raises a one-line
  `data.DataError` for the first that does not answer within `REACH_TIMEOUT_S`; any HTTP answer will do."""
  import requests  # TFDS's own downloader; it comes with tensorflow-datasets

  hosts = hosts_of(builder)
  for host, url in hosts.items():
    outcome: list[BaseException | None] = []

    def ask(url: str = url, outcome: list = outcome) -> None:
      try:
        requests.head(url, timeout=REACH_TIMEOUT_S, allow_redirects=False).close()
        outcome.append(None)
      except requests.RequestException as e:
        outcome.append(e)

    # A thread, because a name lookup that hangs is bounded by no timeout of requests.
    asker = threading.Thread(target=ask, daemon=True, name=f"reach {host}")
    asker.start()
    asker.join(REACH_TIMEOUT_S)
    if not outcome or outcome[0] is not None:
      reason = _why_unreachable(outcome[0] if outcome else None)
      raise data.DataError(
        f"config.dataset.name={cfg.name!r} is not prepared in {data.where(cfg)} and cannot be downloaded: "
        f"{host} {reason}. Without the internet, {data.WITHOUT_INTERNET}"
      )
  return list(hosts)


def _why_unreachable(e: BaseException | None) -> str:
  text = "" if e is None else repr(e)
  if e is None or "timed out" in text or "Timeout" in type(e).__name__:
    return f"did not answer within {REACH_TIMEOUT_S:g} s"
  if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
    return "is not a name this machine can resolve (no internet, or no DNS)"
  if "refused" in text:
    return "refused the connection"
  if "ProxyError" in type(e).__name__:
    return "could not be reached through the proxy this environment names"
  return f"cannot be reached ({type(e).__name__})"


def _first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[0] if lines else "no message"
