"""How steps run fast on XLA:CPU: compile options, a batch gradient in chunks, and host memory. Policy, never math.

How a step is compiled is chosen by backend, never what it computes. Every conv is XLA's (`deconv_jax.ops`);
on CPU the steps are compiled with `compiler_options`, which give the convolutions to XLA's own kernels
rather than YNNPACK's, and the train steps take a large batch's gradient in chunks (`mean_and_grad`, the
one way every task takes its loss's gradient). Inside ``with plain_xla():`` a step is traced and compiled as
stock JAX would: the reference the fast path is tested and timed against. `reuse_freed_memory` keeps
XLA:CPU's per-step buffers in glibc's heap.

Host memory: XLA:CPU allocates a step's temporary buffer (tens of MB for a batch of 256) with ``malloc`` on
every execution and frees it at the end. glibc serves an allocation that large with a fresh ``mmap`` and
returns it with ``munmap``, so every step touches new pages: thousands of minor page faults and tens of
milliseconds of kernel time per step. `reuse_freed_memory` raises glibc's mmap and trim thresholds, so those
buffers come from the heap and stay there; the next step gets the same, already-mapped pages. The cost: the
process keeps its peak heap instead of returning it to the system.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

# ---------------------------------------------------------------- the plain program and the compile options

_PLAIN_XLA = contextvars.ContextVar("deconv_jax_plain_xla", default=False)


@contextlib.contextmanager
def plain_xla():
  """No fast paths inside: steps are traced and compiled as stock JAX would, on every backend.

  `fast_paths` is False (the tasks' train steps keep their plain formulation: whole batches) and
  `compiler_options` is None (XLA's defaults). It acts when a function is traced: a jitted function
  keeps the choice it was compiled with, and ``jax.jit``'s cache does not see the context, so jit a
  new function (a new lambda) inside it.
  """
  token = _PLAIN_XLA.set(True)
  try:
    yield
  finally:
    _PLAIN_XLA.reset(token)


def fast_paths() -> bool:
  """False inside `plain_xla`: then callers (the tasks' train steps) also keep their plain formulation."""
  return not _PLAIN_XLA.get()


# XLA:CPU hands each convolution, dot and reduction to a library: in jaxlib 0.10 YNNPACK takes all three
# (fusion types INDIVIDUAL_CONVOLUTION, INDIVIDUAL_DOT, REDUCE), else XLA's own Eigen kernels run them. On the
# classifier's and the DCGAN's convolutions YNNPACK ran the forward pass and both gradients slower than Eigen
# (`python -m deconv_jax.experiments.speed --only=conv_library` measures it), so the fast path keeps YNNPACK for dots
# and reductions and gives convolutions back to XLA. jaxlib 0.7 (Colab's) has neither YNNPACK nor the option.
_CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}


def compiler_options(platform: str) -> dict[str, str] | None:
  """XLA compile options for a step compiled for ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``), for ``jax.jit``.

  On CPU, convolutions run XLA's own kernels instead of YNNPACK's; elsewhere, inside `plain_xla`, and with
  a jaxlib that does not know the option, None (XLA's defaults). Read when called: call it where the
  ``jax.jit`` is made, inside `plain_xla` for the plain program.
  """
  if platform != "cpu" or _PLAIN_XLA.get() or not cpu_options_supported():
    return None
  return dict(_CPU_COMPILER_OPTIONS)


@functools.cache
def cpu_options_supported() -> bool:
  """Whether this jaxlib's XLA:CPU takes `_CPU_COMPILER_OPTIONS` (an unknown option fails the compile)."""
  try:
    x = jax.device_put(jnp.zeros(()), jax.devices("cpu")[0])
    jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(x).compile()
  except Exception:  # any failure means: compile with XLA's defaults
    return False
  return True


# ---------------------------------------------------------------- a batch mean's gradient

# Images per gradient chunk on CPU: the forward and backward maps of 32 of the classifier's 28x28 images stay
# in cache, and its batch-256 step ran faster in chunks of 32 than whole; 128 tied 32 and larger chunks were
# slower (`python -m deconv_jax.experiments.speed --only=train_step`, with CPU_CHUNK edited, measures it).
CPU_CHUNK = 32


def mean_and_grad(
  sum_fn: Callable[..., tuple[jax.Array, Any]], params: Any, *arrays: jax.Array, coupled: bool = False
) -> tuple[tuple[jax.Array, Any], Any]:
  """``value_and_grad`` of the batch mean, from ``sum_fn(params, *arrays) -> (sum over the batch, aux)``.

  The one way every task takes its loss's gradient in its parameters. ``arrays`` (None passes through)
  have the batch as their leading axis, and so does ``aux`` unless ``coupled``. On CPU a batch larger
  than `CPU_CHUNK` is taken in consecutive chunks of that many rows, whose sums and gradients are added
  (the same sum in another float order); on other backends, inside `plain_xla`, and where the examples
  are ``coupled`` (batch norm in training mode makes each output depend on the whole batch), in one piece.
  """
  batch = next(a for a in arrays if a is not None).shape[0]

  def whole(params, *arrays):
    (total, aux), grads = jax.value_and_grad(sum_fn, has_aux=True)(params, *arrays)
    return total, aux, grads

  def chunked(params, *arrays):
    total, auxes, grads = None, [], None
    for start in range(0, batch, CPU_CHUNK):  # unrolled: a lax.scan over the chunks ran slower on XLA:CPU
      chunk = tuple(None if a is None else a[start : start + CPU_CHUNK] for a in arrays)
      if grads is not None:  # a chunk starts when the last one is done (XLA:CPU still gives each its own buffers)
        chunk, grads = lax.optimization_barrier((chunk, grads))
      chunk_total, aux, chunk_grads = whole(params, *chunk)
      auxes.append(aux)
      total = chunk_total if total is None else total + chunk_total
      grads = chunk_grads if grads is None else jax.tree.map(jnp.add, grads, chunk_grads)
    return total, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *auxes), grads

  if coupled or batch <= CPU_CHUNK or not fast_paths():
    total, aux, grads = whole(params, *arrays)
  else:
    total, aux, grads = lax.platform_dependent(params, *arrays, cpu=chunked, default=whole)
  return (total / batch, aux), jax.tree.map(lambda g: g / batch, grads)


# ---------------------------------------------------------------- host memory

# glibc's mallopt parameters (malloc.h) and the value for both: allocations up to 1 GiB come from the
# heap, and up to 1 GiB of free memory at its top is kept.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30


@functools.cache
def reuse_freed_memory() -> bool:
  """Sets glibc's mmap and trim thresholds for this process (once); False where there is no glibc.

  Changes how memory is obtained, never what is computed. `train.train_and_evaluate` and the
  benchmark call it: it made the classifier's batch-256 step and the DCGAN step faster on CPU
  (`python -m deconv_jax.experiments.speed --only=train_step` measures it).
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # no C library by that name, or not glibc (musl has no mallopt)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all(mallopt(param, _THRESHOLD) == 1 for param in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
