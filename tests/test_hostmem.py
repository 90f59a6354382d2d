"""`hostmem.reuse_freed_memory` sets glibc's thresholds where there is glibc, and is a no-op elsewhere."""

import ctypes
import subprocess
import sys

import pytest

from deconv_jax import config as config_lib
from deconv_jax import hostmem, train


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_sets_both_thresholds_on_glibc_once():
  # In a fresh process: the setting is per process and cached.
  code = (
    "from deconv_jax import hostmem; "
    "print(hostmem.reuse_freed_memory(), hostmem.reuse_freed_memory(), hostmem.reuse_freed_memory.cache_info().misses)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
  assert out == ["True", "True", "1"]


def test_without_a_c_library_it_changes_nothing(monkeypatch):
  def no_libc(*args, **kwargs):
    raise OSError("no libc here")

  monkeypatch.setattr(ctypes, "CDLL", no_libc)
  hostmem.reuse_freed_memory.cache_clear()
  try:
    assert hostmem.reuse_freed_memory() is False
  finally:
    hostmem.reuse_freed_memory.cache_clear()


def test_off_linux_it_changes_nothing(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  hostmem.reuse_freed_memory.cache_clear()
  try:
    assert hostmem.reuse_freed_memory() is False
  finally:
    hostmem.reuse_freed_memory.cache_clear()


def test_train_sets_it_before_any_work(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(hostmem, "reuse_freed_memory", lambda: calls.append("set"))
  monkeypatch.setattr(train.tasks, "get", lambda name: (_ for _ in ()).throw(RuntimeError("stop here")))
  with pytest.raises(RuntimeError, match="stop here"):
    train.train_and_evaluate(config_lib.base(), str(tmp_path))
  assert calls == ["set"]
