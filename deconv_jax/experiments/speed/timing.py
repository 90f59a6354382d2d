"""How the speed experiment times things: alternately, checked first, and what each record says of the machine."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def device_record() -> dict[str, Any]:
  """What every record carries: the backend and how many devices it has."""
  return {"backend": jax.default_backend(), "devices": jax.device_count()}


def machine_record() -> dict[str, Any]:
  """Where and with what a record was measured, in the peers' fields."""
  return {
    "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "python": platform.python_version(),
    "cpu": _cpu_name(),
    "cpu_count": os.cpu_count(),
    "versions": _versions(),
    **device_record(),
  }


def _versions() -> dict[str, str]:
  import flax
  import jaxlib
  import optax

  return {
    "jax": jax.__version__,
    "jaxlib": jaxlib.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "numpy": np.__version__,
  }


def _cpu_name() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
  except OSError:
    return None


def interleaved_ms(fns: Sequence[Callable[[], Any]], *, repeats: int, calls: int) -> list[list[float]]:
  """Milliseconds per call of each of ``fns``, sampled round-robin (A, B, A, B, ...).

  Each sample is ``calls`` calls, each blocked on (``jax.block_until_ready``);
  returns ``repeats`` samples per function. Every function is called once first (compile, warm-up).
  """
  for fn in fns:
    jax.block_until_ready(fn())
  samples: list[list[float]] = [[] for _ in fns]
  for _ in range(repeats):
    for fn, out in zip(fns, samples):
      start = time.perf_counter()
      for _ in range(calls):
        jax.block_until_ready(fn())
      out.append((time.perf_counter() - start) / calls * 1e3)
  return samples


def check_same(name: str, a: jax.Array, b: jax.Array, rtol: float = 1e-4) -> float:
  """Largest ``|a - b|`` relative to ``max |b|``; RuntimeError if the two gradients are not the same map's."""
  a, b = np.asarray(a), np.asarray(b)
  rel = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
  if a.shape != b.shape or not rel <= rtol:
    raise RuntimeError(f"{name}: the two paths disagree (shapes {a.shape}, {b.shape}; relative difference {rel:.3g})")
  return rel


def jit_vdot_grad(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``jit(grad(lambda a, *rest, ct: <f(a, *rest), ct>))``: the gradient in the first argument; ``ct`` comes last."""
  return jax.jit(jax.grad(lambda *args: jnp.vdot(f(*args[:-1]), args[-1])))


def pair_record(
  benchmark: str, names: tuple[str, str], samples: list[list[float]], max_rel_diff: float, calls: int, **shapes: Any
) -> dict[str, Any]:
  ms_a, ms_b = (statistics.median(s) for s in samples)
  return {
    "benchmark": benchmark,
    **shapes,
    f"{names[0]}_ms": ms_a,
    f"{names[1]}_ms": ms_b,
    "ratio": ms_a / ms_b,
    "max_rel_diff": max_rel_diff,
    "calls": calls,
    "repeats": len(samples[0]),
    **device_record(),
  }
