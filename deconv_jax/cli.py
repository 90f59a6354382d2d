"""Command-line plumbing shared by ``train``, ``evaluate``, ``visualize`` and ``benchmark``: one-line errors, exit 2.

A user mistake (an unknown config key, a bad value, a dataset that is not
there) is reported as ``error: ...`` on stderr, never as a traceback.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from deconv_jax import storage
from deconv_jax import workdir as workdir_lib
from deconv_jax.checkpoint import CheckpointError
from deconv_jax.config import ConfigError
from deconv_jax.data import DataError
from deconv_jax.storage import StorageError

USER_ERRORS = (ConfigError, DataError, CheckpointError, StorageError)


def die(message: str, *, at_once: bool = False) -> NoReturn:
  """Prints ``error: message`` (one line) to stderr and exits with status 2.

  ``at_once``: without running shutdown handlers (``os._exit``), for when library threads would
  print more about the same error while the interpreter shuts down.
  """
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  if at_once:
    sys.stdout.flush()
    os._exit(2)
  sys.exit(2)


def _override_keys(argv: list[str], flag: str) -> list[str]:
  return [m.group(1) for a in argv if (m := re.match(rf"--{flag}\.([\w.]+)", a))]


def _unknown_key(argv: list[str], flag: str, error: Exception) -> NoReturn:
  """One line for an override of a key the config lacks, with ml_collections' suggestion when it has one."""
  text = str(error).encode().decode("unicode_escape")  # the message arrives repr-escaped, quotes and all
  missing = m.group(1) if (m := re.search(r"'([\w.]+)'", text)) else text.strip("\"' ")
  keys = [k for k in _override_keys(argv, flag) if missing in k.split(".")] or [missing]
  hint = "see the config file for its keys"
  if m := re.search(r'mean "(\w+)"', text):
    hint = f"did you mean --{flag}.{keys[0][: -len(missing)]}{m.group(1)}?"
  die(f"unknown config key --{flag}.{keys[0]}: the config has no such key; {hint}")


def parse_flags(argv: list[str], config_flag: str = "config") -> list[str]:
  """``absl`` flag parsing whose errors are one line: unknown flags or config keys, unparsable values."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:  # ml_collections puts the config's whole traceback here
      flag = m.group(1) if (m := re.match(r"flag (--\S+): ", text)) else f"--{config_flag}"
      die(f"{flag}: cannot load the config ({text.strip().splitlines()[-1].strip()})")
    die(text)
  except SyntaxError as e:  # a config file that is not Python
    die(f"--{config_flag}={e.filename}: line {e.lineno}: {e.msg}")
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks.
    _unknown_key(argv, config_flag, e)
  value = flags.FLAGS[config_flag].value if config_flag in flags.FLAGS else None
  if type(value).__name__ == "_ErrorConfig":  # config_flags defers a failed load to first use.
    try:
      value.anything  # noqa: B018 - re-raises the load error
    except Exception as e:  # whatever the config file raised
      die(f"--{config_flag}={flags.FLAGS[config_flag].config_filename}: cannot load the config ({e})")
  return remaining


def run(main: Callable[[list[str]], object], define_flags: Callable[[], object], config_flag: str = "config") -> None:
  """Defines the flags and runs ``app.run(main)``, with one-line errors for bad flags, configs and data.

  ``config_flags`` applies ``--config.KEY=VALUE`` overrides while the flag is
  defined, so the definition happens here, where its errors are caught.
  """
  try:
    define_flags()
  except (AttributeError, KeyError) as e:
    _unknown_key(sys.argv, config_flag, e)
  except flags.Error as e:
    die(str(e))

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; keep the console for progress.
      logging.set_verbosity(logging.WARNING)
    _quiet_orphaned_async_errors()
    try:
      main(argv)
    except CheckpointError as e:
      # orbax's event-loop threads still hold the failed reads or writes; left to shut down, they print
      # tracebacks of the errors this line already reports. Nothing is pending: the manager is closed.
      die(str(e), at_once=True)
    except USER_ERRORS as e:
      die(str(e))

  app.run(guarded, flags_parser=lambda argv: parse_flags(argv, config_flag))


def _quiet_orphaned_async_errors() -> None:
  """When one read or write of an orbax save or restore fails, its sibling tasks fail too: orbax's threads log
  each with its traceback, asyncio logs them again ("Task exception was never retrieved") and tensorstore's
  callbacks print "Event loop is closed". The exception that reaches the command becomes the one-line error
  (`checkpoint.CheckpointError`); these echoes of it are dropped."""
  std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
  logging.get_absl_logger().addFilter(lambda record: "/orbax/" not in record.pathname or record.levelno < logging.ERROR)
  default = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
      default(unraisable)

  sys.unraisablehook = hook


def _workdir_from_argv(argv: list[str]) -> str:
  """The last ``--workdir`` value (as absl would take it), read before flags exist."""
  workdir = None
  for i, arg in enumerate(argv):
    if m := re.fullmatch(r"--workdir=(.*)", arg):
      workdir = m.group(1)
    elif arg == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  if not workdir:
    die("--workdir=DIR is required: the directory of a training run")
  return workdir


def define_workdir_flags(argv: list[str]) -> None:
  """``--workdir`` (a training run) and ``--config``, the config saved there, so ``--config.KEY=VALUE`` overrides it.

  The config is read before flags are parsed, from the ``--workdir`` in ``argv``.
  """
  workdir = _workdir_from_argv(argv)
  try:
    storage.check_reachable(workdir, "--workdir")
    saved = workdir_lib.saved_config(workdir)
  except (ConfigError, StorageError) as e:  # read before `run` catches user errors
    die(str(e))
  if saved is None:
    die(f"--workdir={workdir} has no config.json: not a training run directory")
  flags.DEFINE_string("workdir", None, "Run directory written by deconv_jax.train.")
  config_flags.DEFINE_config_dict("config", saved, "Overrides of the run's saved config.")
