"""Devices and hosts: multi-host start-up, replicating state, splitting a batch over local devices.

Data parallelism is ``jax.pmap`` over each host's local devices with one
global axis ``"batch"``; each process feeds only its own shard of the data
(`data` shards by ``jax.process_index()``).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax import lax

AXIS = "batch"


def pmean(x: Any, axis_name: str | None) -> Any:
  """``lax.pmean(x, axis_name)`` inside ``pmap``; ``x`` itself when compiled with ``jit`` (``axis_name=None``)."""
  return x if axis_name is None else lax.pmean(x, axis_name)


def psum(x: Any, axis_name: str | None) -> Any:
  """``lax.psum(x, axis_name)`` inside ``pmap``; ``x`` itself when compiled with ``jit`` (``axis_name=None``)."""
  return x if axis_name is None else lax.psum(x, axis_name)


def initialize(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0, auto: bool = False) -> None:
  """Starts multi-process JAX, if asked to; must run before anything touches the devices.

  ``auto``: ``jax.distributed.initialize()`` discovers the cluster itself (Cloud TPU
  pods, SLURM, Open MPI). Otherwise, with ``num_processes > 1``, the explicit
  coordinator ``host:port`` (process 0's address), the process count and this
  process's id: how CPU or GPU hosts, or several processes on one machine, join.
  """
  if auto:
    jax.distributed.initialize()
  elif num_processes > 1:
    jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)


def check_batch_size(global_batch_size: int, key: str = "batch_size") -> int:
  """Per-device batch size; ValueError naming ``key`` if the global batch does not split evenly."""
  devices = jax.device_count()
  if global_batch_size % devices:
    raise ValueError(
      f"config.{key}={global_batch_size} does not divide over {devices} devices "
      f"({jax.process_count()} processes x {jax.local_device_count()}): use a multiple of {devices}"
    )
  return global_batch_size // devices


def replicate(tree: Any) -> Any:
  """Copies every leaf to all local devices, as a leading axis of size ``jax.local_device_count()``."""
  n = jax.local_device_count()
  stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
  return jax.pmap(lambda x: x)(stacked)


def unreplicate(tree: Any) -> Any:
  """The first local device's copy, fetched to host memory (numpy)."""
  return jax.device_get(jax.tree.map(lambda x: x[0], tree))


def shard(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``[B, ...] -> [local_devices, B // local_devices, ...]`` for ``pmap``."""
  n = jax.local_device_count()
  return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
