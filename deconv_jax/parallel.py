"""Devices and hosts: multi-process start-up, and the one place a step is compiled over devices.

A step is written once with an ``axis_name``: gradients, batch statistics and metrics are
``pmean``-ed over it, evaluation sums ``psum``-ed. A `DataParallel` compiles it, in one of `KINDS`:

- ``"shard_map"`` (default): ``jax.jit(jax.shard_map(step, mesh=..., in_specs=..., out_specs=...))``
  over a one-axis ``Mesh`` of every device of every process. The state is replicated by its
  sharding (one global array per leaf, no device axis); a batch is one global ``jax.Array``
  split over the mesh, built from each process's rows (``jax.make_array_from_process_local_data``).
- ``"pmap"``: ``jax.pmap`` over each process's local devices, as JAX did it before shard_map; the
  state is stacked replicas (a leading axis of ``jax.local_device_count()``), a batch is reshaped to
  ``[local_devices, B // local_devices, ...]``.

Both give the same parameters (tests check it). Each process feeds only its own rows of a global
batch (`data` shards by ``jax.process_index()``); device ``d`` of the mesh holds rows
``[d * b, (d + 1) * b)`` of the global batch, ``b`` per device, and ``lax.axis_index`` is ``d``
under both kinds, so per-example keys folded from the global row agree with one device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from deconv_jax import xla_cpu

AXIS = "batch"
KINDS = ("shard_map", "pmap")


def pmean(x: Any, axis_name: str | None) -> Any:
  """``lax.pmean(x, axis_name)`` inside a compiled `DataParallel` step; ``x`` itself for ``axis_name=None``."""
  return x if axis_name is None else lax.pmean(x, axis_name)


def psum(x: Any, axis_name: str | None) -> Any:
  """``lax.psum(x, axis_name)`` inside a compiled `DataParallel` step; ``x`` itself for ``axis_name=None``."""
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


class DataParallel:
  """Places states and batches on every device of every process, and compiles the steps that use them.

  Each compiled step takes a state placed by `put_state` and this process's rows of the batch
  (numpy, ``[N // process_count, ...]``), and returns what every device agrees on (``pmean``-ed
  or ``psum``-ed) as this process's copy: one array per leaf under ``"shard_map"`` (fetching it
  waits for nothing else), stacked ``[local_devices, ...]`` under ``"pmap"``.
  """

  def __init__(self, kind: str = "shard_map"):
    if kind not in KINDS:
      raise ValueError(f"config.parallel={kind!r} is not allowed: one of {KINDS}")
    self.kind = kind
    # Auto axes: the step below is manual over the mesh; nothing outside it needs sharding in types.
    self.mesh = jax.make_mesh((jax.device_count(),), (AXIS,), axis_types=(AxisType.Auto,))
    self._replicated = NamedSharding(self.mesh, P())
    self._split = NamedSharding(self.mesh, P(AXIS))

  # ------------------------------------------------------------ placement

  def put_state(self, tree: Any) -> Any:
    """``tree`` on every device: replicated by sharding, or (pmap) stacked replicas."""
    if self.kind == "pmap":
      n = jax.local_device_count()
      stacked = jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n, *np.shape(x))), tree)
      return jax.pmap(lambda x: x)(stacked)
    return jax.tree.map(self._put_replicated, jax.device_get(tree))

  def _put_replicated(self, x: Any) -> jax.Array:
    """A value every process holds alike -> one global array, replicated (``device_put`` takes only local devices)."""
    return jax.make_array_from_process_local_data(self._replicated, np.asarray(x))

  def get_state(self, tree: Any) -> Any:
    """A state placed by `put_state`, in host memory (numpy), on every process: this process's replica."""
    if self.kind == "pmap":
      return jax.device_get(jax.tree.map(lambda x: x[0], tree))
    return jax.device_get(self._local(tree))

  def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows ``[N / processes, ...]`` -> the global batch, split over the devices."""
    if self.kind == "pmap":
      n = jax.local_device_count()
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split, x), batch)

  def _local(self, tree: Any) -> Any:
    """Each replicated leaf's copy on this process's first device (no copy, no wait)."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)

  # ------------------------------------------------------------ compiling

  def _compile(self, fn: Callable[..., Any], num_args: int, donate_state: bool) -> Callable[..., Any]:
    """``fn(state, batch, *rest, axis_name=AXIS)``: state and ``rest`` replicated, the batch split."""
    step = lambda *args: fn(*args, axis_name=AXIS)
    donate = (0,) if donate_state else ()
    if self.kind == "pmap":
      in_axes = (0, 0, *[None] * (num_args - 2))  # stacked state, split batch, the rest the same everywhere
      return jax.pmap(step, axis_name=AXIS, in_axes=in_axes, donate_argnums=donate)
    # check_vma=False, as pmap: the step averages its own gradients. With check_vma=True the gradient of
    # a replicated parameter would come back psum-ed already, and the step's pmean would not undo it.
    in_specs = (P(), P(AXIS), *[P()] * (num_args - 2))
    mapped = jax.shard_map(step, mesh=self.mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
    return jax.jit(mapped, donate_argnums=donate, compiler_options=self._compiler_options())

  def _compiler_options(self) -> dict[str, str] | None:
    """`xla_cpu.compiler_options` for the mesh's platform (``jax.pmap`` takes none: it compiles with XLA's defaults)."""
    return xla_cpu.compiler_options(self.mesh.devices.flat[0].platform)

  def train_step(self, fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
    """``fn(state, batch, rng, *, axis_name) -> (state, metrics)``, compiled; the state is donated.

    Returns ``step(state, local_batch, rng) -> (state, metrics)``: the new state stays placed,
    the metrics come back as this process's copy.
    """
    compiled = self.compile_train_step(fn)
    if self.kind == "pmap":
      return lambda state, batch, rng: compiled(state, self.put_batch(batch), rng)

    def step(state: Any, batch: dict[str, np.ndarray], rng: jax.Array) -> tuple[Any, Any]:
      state, metrics = compiled(state, self.put_batch(batch), rng)
      return state, self._local(metrics)

    return step

  def compile_train_step(self, fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
    """The program `train_step` runs, on a batch already placed by `put_batch`: ``(state, batch, rng) -> (state,
    metrics)``, the metrics as every device has them. For timing a step apart from its input."""
    return self._compile(fn, 3, donate_state=True)

  def eval_step(self, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(state, batch, *, axis_name) -> sums``, compiled: ``step(state, local_batch) -> sums`` (this process's)."""
    compiled = self._compile(fn, 2, donate_state=False)
    if self.kind == "pmap":
      return lambda state, batch: compiled(state, self.put_batch(batch))
    return lambda state, batch: self._local(compiled(state, self.put_batch(batch)))

  def on_state(self, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn(state) -> out`` with no batch (a grid of samples), compiled; ``out`` is this process's copy.

    Every device computes the same ``out`` from its replica; under ``"pmap"`` one device does, from the
    state fetched to the host.
    """
    if self.kind == "pmap":
      compiled = jax.jit(fn)
      return lambda state: compiled(self.get_state(state))
    compiled = jax.jit(fn, out_shardings=self._replicated, compiler_options=self._compiler_options())
    return lambda state: self._local(compiled(state))
