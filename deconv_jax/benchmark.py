r"""Measured speed: ``python -m deconv_jax.benchmark`` prints one JSON object per line on stdout.

Five benchmarks (``--only`` picks among them):

- ``train_step``: the classifier's train step (the model and optimizer of
  ``--config``, by default `config.base()`: the default CNN with Adam) on
  synthetic ``[B, 28, 28, 1]`` images, compiled exactly as `train` compiles it
  for one device (``jax.jit`` with ``donate_argnums=(0,)``). Reports images/s
  and steps/s (the median over ``--repeats`` runs of ``--steps`` chained steps,
  after warm-up) and the compile time (``jit(...).lower(...).compile()``,
  tracing included). No input pipeline: the batch is already on the device.
- ``deconv_kernel_grad``, ``max_pool_grad``, ``deconv3d_kernel_grad`` and
  ``deconv3d_input_grad``: how the primitives of `ops` compare with the plain
  XLA lowering, each pair measured side by side in one run. The kernel gradient
  of ``lax.conv_transpose(..., transpose_kernel=True)`` (what flax
  ``ConvTranspose`` uses) against that through `ops.deconv2d` for the same map;
  the input gradient of ``lax.reduce_window`` max-pool against that of
  `ops.max_pool` (and of plain reshape-and-max, which splits ties); the kernel
  and input gradients of a 3-D transposed conv, ``lax.conv_transpose`` against
  `ops.deconv`. Both variants are checked to give the same gradient, then timed
  alternately (A, B, A, B, ...) so that the machine's noise hits both alike;
  ``ratio`` is ``median(A) / median(B)`` (> 1: the `ops` path is faster).

Every record carries ``backend`` and ``devices``. Example::

  python -m deconv_jax.benchmark --batch_sizes=32,256 --repeats=5 --steps=20
"""

from __future__ import annotations

import json
import math
import statistics
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from jax import lax
from ml_collections import config_flags

from deconv_jax import cli, ops, tasks
from deconv_jax import config as config_lib
from deconv_jax.tasks import classifier

BENCHMARKS = ("train_step", "deconv_kernel_grad", "max_pool_grad", "deconv3d_kernel_grad", "deconv3d_input_grad")


def _platform() -> dict[str, Any]:
  return {"backend": jax.default_backend(), "devices": jax.device_count()}


def _interleaved_ms(fns: Sequence[Callable[[], Any]], *, repeats: int, calls: int) -> list[list[float]]:
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


def _check_same(name: str, a: jax.Array, b: jax.Array, rtol: float = 1e-4) -> float:
  """Largest ``|a - b|`` relative to ``max |b|``; RuntimeError if the two gradients are not the same map's."""
  a, b = np.asarray(a), np.asarray(b)
  rel = float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))
  if a.shape != b.shape or not rel <= rtol:
    raise RuntimeError(f"{name}: the two paths disagree (shapes {a.shape}, {b.shape}; relative difference {rel:.3g})")
  return rel


def _jit_vdot_grad(f: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``jit(grad(lambda a, *rest, ct: <f(a, *rest), ct>))``: the gradient in the first argument; ``ct`` comes last."""
  return jax.jit(jax.grad(lambda *args: jnp.vdot(f(*args[:-1]), args[-1])))


def _pair_record(
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
    **_platform(),
  }


# ----------------------------------------------------------------------------
# The classifier's train step.
# ----------------------------------------------------------------------------


def train_step_benchmark(
  batch_size: int,
  *,
  steps: int = 20,
  repeats: int = 5,
  config: ml_collections.ConfigDict | None = None,
  image_shape: tuple[int, int, int] = (28, 28, 1),
  num_classes: int = 10,
) -> dict[str, Any]:
  """Throughput and compile time of ``classifier.train_step`` on one device, as `train` compiles it.

  Synthetic data: uniform ``[batch_size, *image_shape]`` images and random labels,
  already on the device. ``compile_sec`` times ``jit(...).lower(...).compile()``
  (tracing, lowering, XLA). After two warm-up steps, ``repeats`` runs of
  ``steps`` chained steps (each step's state feeds the next, keys folded from the
  step number as in `train`) are timed to the last step's result; the median run
  gives ``steps_per_sec`` and ``images_per_sec``.
  """
  config = config_lib.base() if config is None else config
  info = types.SimpleNamespace(image_shape=tuple(image_shape), num_classes=num_classes)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  # Jitted: one compilation instead of one per eager op of init (seconds on CPU).
  state = jax.jit(lambda r: classifier.create_state(config, r, info, total_steps=max(steps * repeats, 1)))(init_rng)
  data_rng = np.random.default_rng(config.seed)
  batch = {
    "image": jnp.asarray(data_rng.random((batch_size, *image_shape), np.float32)),
    "label": jnp.asarray(data_rng.integers(0, num_classes, (batch_size,), np.int32)),
  }
  rngs = [jax.random.fold_in(train_rng, i) for i in range(steps)]

  # Exactly train.py's single-device update step.
  p_train_step = jax.jit(lambda s, b, r: classifier.train_step(s, b, r, config=config), donate_argnums=(0,))
  start = time.perf_counter()
  p_train_step.lower(state, batch, rngs[0]).compile()
  compile_sec = time.perf_counter() - start

  for rng in rngs[:2]:  # warm-up
    state, metrics = p_train_step(state, batch, rng)
  jax.block_until_ready((state, metrics))
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    for rng in rngs:
      state, metrics = p_train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
  steps_per_sec = steps / statistics.median(seconds)
  return {
    "benchmark": "train_step",
    "batch_size": batch_size,
    "images_per_sec": steps_per_sec * batch_size,
    "steps_per_sec": steps_per_sec,
    "compile_sec": compile_sec,
    "steps": steps,
    "repeats": repeats,
    **_platform(),
  }


# ----------------------------------------------------------------------------
# The design claims: lax/flax primitives against the ops.py paths.
# ----------------------------------------------------------------------------


def _deconv_grad_pair(
  wrt: str,
  n: int,
  batch: int,
  in_size: Sequence[int],
  in_channels: int,
  out_channels: int,
  kernel_size: int,
  strides: int,
  calls: int,
  repeats: int,
) -> tuple[list[list[float]], float, dict[str, Any]]:
  """Times the ``wrt`` ("kernel" or "input") gradient of ``<deconv(y, k), ct>``: lax.conv_transpose, then ops.deconv.

  A "SAME" transposed conv ``[batch, *in_size, in_channels] -> [batch, *(in_size * strides), out_channels]``, ``n``
  spatial axes; ``k`` is the forward conv's kernel ``[*(kernel_size,) * n, out_channels, in_channels]`` in both.
  """
  ky, kk, kc = jax.random.split(jax.random.key(0), 3)
  y = jax.random.normal(ky, (batch, *in_size, in_channels), jnp.float32)
  kernel = jax.random.normal(kk, ((kernel_size,) * n + (out_channels, in_channels)), jnp.float32)
  ct = jax.random.normal(kc, (batch, *(size * strides for size in in_size), out_channels), jnp.float32)
  dimension_numbers = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[n]

  def lax_path(k: jax.Array, y: jax.Array) -> jax.Array:
    return lax.conv_transpose(y, k, (strides,) * n, "SAME", dimension_numbers=dimension_numbers, transpose_kernel=True)

  def ops_path(k: jax.Array, y: jax.Array) -> jax.Array:
    return ops.deconv(y, k, strides=strides, padding="SAME")

  args = (kernel, y, ct) if wrt == "kernel" else (y, kernel, ct)
  paths = [f if wrt == "kernel" else (lambda y, k, f=f: f(k, y)) for f in (lax_path, ops_path)]
  grad_a, grad_b = (_jit_vdot_grad(f) for f in paths)
  rel = _check_same(f"deconv{n}d_{wrt}_grad", grad_a(*args), grad_b(*args))
  samples = _interleaved_ms([lambda: grad_a(*args), lambda: grad_b(*args)], repeats=repeats, calls=calls)
  shapes = {"input_shape": list(y.shape), "output_shape": list(ct.shape), "kernel_shape": list(kernel.shape)}
  return samples, rel, shapes


def deconv_kernel_grad_benchmark(
  *,
  batch: int = 32,
  in_hw: tuple[int, int] = (7, 7),
  in_channels: int = 64,
  out_channels: int = 32,
  kernel_size: int = 4,
  strides: int = 2,
  calls: int = 20,
  repeats: int = 5,
) -> dict[str, Any]:
  """Kernel gradient of a "SAME" transposed conv ``[batch, *in_hw, in_channels] -> [batch, H*s, W*s, out_channels]``.

  A: ``lax.conv_transpose(y, k, transpose_kernel=True)`` (flax ``ConvTranspose``);
  B: ``ops.deconv2d(y, k)`` (the VJP of ``conv2d``). ``k`` is the forward conv's
  HWIO kernel ``[kernel_size, kernel_size, out_channels, in_channels]`` in both,
  the gradient that of ``<deconv(y, k), ct>`` in ``k``, both jitted.
  """
  samples, rel, shapes = _deconv_grad_pair(
    "kernel", 2, batch, in_hw, in_channels, out_channels, kernel_size, strides, calls, repeats
  )
  return _pair_record(
    "deconv_kernel_grad", ("lax_conv_transpose", "ops_deconv2d"), samples, rel, calls, **shapes, strides=strides
  )


def deconv3d_grad_benchmark(
  wrt: str = "kernel",
  *,
  batch: int = 8,
  in_size: tuple[int, int, int] = (8, 8, 8),
  in_channels: int = 32,
  out_channels: int = 16,
  kernel_size: int = 4,
  strides: int = 2,
  calls: int = 20,
  repeats: int = 5,
) -> dict[str, Any]:
  """Kernel (``wrt="kernel"``) or input (``"input"``) gradient of a "SAME" 3-D transposed conv, by default
  ``[8, 8, 8, 8, 32] -> [8, 16, 16, 16, 16]``, kernel 4, stride 2.

  A: ``lax.conv_transpose(y, k, transpose_kernel=True)``; B: `ops.deconv` (the VJP of `ops.conv`, whose own kernel
  gradient is the conv's, `ops.conv_kernel_grad`). ``k`` is the forward conv's DHWIO kernel
  ``[kernel_size] * 3 + [out_channels, in_channels]`` in both, the gradient that of ``<deconv(y, k), ct>``, jitted.
  """
  if wrt not in ("kernel", "input"):
    raise ValueError(f"wrt must be 'kernel' or 'input', got {wrt!r}")
  samples, rel, shapes = _deconv_grad_pair(
    wrt, 3, batch, in_size, in_channels, out_channels, kernel_size, strides, calls, repeats
  )
  return _pair_record(
    f"deconv3d_{wrt}_grad", ("lax_conv_transpose", "ops_deconv"), samples, rel, calls, **shapes, strides=strides
  )


def max_pool_grad_benchmark(
  *, shape: tuple[int, int, int, int] = (32, 26, 26, 32), window: int = 2, calls: int = 20, repeats: int = 5
) -> dict[str, Any]:
  """Input gradient of a ``window`` x ``window`` / stride ``window`` VALID max-pool of a ``shape`` (NHWC) map.

  A: ``lax.reduce_window(x, -inf, lax.max, ...)`` (select-and-scatter gradient);
  B: `ops.max_pool` (reshape-and-max, one switch per window). The gradient is that of ``<pool(x), ct>`` in
  ``x``, all jitted. Also timed in the same rotation: reshape-and-max with ``jnp.max``'s own gradient, which
  splits the signal among tied maxima (``reshape_max_even_split_ms``; ``ratio_vs_even_split`` is its median
  over B's). ``x`` is normal noise, without ties, so all three compute the same gradient and are checked to.
  """
  kx, kc = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape, jnp.float32)
  ct = jax.random.normal(kc, (shape[0], *ops.max_pool_output_shape(shape[1:3], window), shape[3]), jnp.float32)
  n, h, w, c = shape
  ho, wo = h // window, w // window

  def reduce_window_path(x: jax.Array) -> jax.Array:
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, window, window, 1), "VALID")

  def ops_path(x: jax.Array) -> jax.Array:
    return ops.max_pool(x, window)

  def even_split_path(x: jax.Array) -> jax.Array:
    return x[:, : ho * window, : wo * window].reshape(n, ho, window, wo, window, c).max(axis=(2, 4))

  grad_a, grad_b, grad_c = (_jit_vdot_grad(f) for f in (reduce_window_path, ops_path, even_split_path))
  rel = _check_same("max_pool_grad", grad_a(x, ct), grad_b(x, ct))
  _check_same("max_pool_grad (even split)", grad_c(x, ct), grad_b(x, ct))
  samples = _interleaved_ms(
    [lambda: grad_a(x, ct), lambda: grad_b(x, ct), lambda: grad_c(x, ct)], repeats=repeats, calls=calls
  )
  record = _pair_record(
    "max_pool_grad",
    ("reduce_window", "ops_max_pool"),
    samples[:2],
    rel,
    calls,
    input_shape=list(shape),
    window=window,
  )
  record["reshape_max_even_split_ms"] = statistics.median(samples[2])
  record["ratio_vs_even_split"] = record["reshape_max_even_split_ms"] / record["ops_max_pool_ms"]
  return record


def run_benchmarks(
  only: Sequence[str] = BENCHMARKS,
  *,
  batch_sizes: Sequence[int] = (32, 256),
  steps: int = 20,
  repeats: int = 5,
  config: ml_collections.ConfigDict | None = None,
  emit: Callable[[dict[str, Any]], object] | None = None,
) -> list[dict[str, Any]]:
  """Runs the benchmarks named in ``only`` (in `BENCHMARKS` order); ``emit`` sees each record as it is made."""
  records = []

  def add(record: dict[str, Any]) -> None:
    records.append(record)
    if emit is not None:
      emit(record)

  if "train_step" in only:
    for batch_size in batch_sizes:
      add(train_step_benchmark(batch_size, steps=steps, repeats=repeats, config=config))
  if "deconv_kernel_grad" in only:
    add(deconv_kernel_grad_benchmark(calls=steps, repeats=repeats))
  if "max_pool_grad" in only:
    add(max_pool_grad_benchmark(calls=steps, repeats=repeats))
  for wrt in ("kernel", "input"):
    if f"deconv3d_{wrt}_grad" in only:
      add(deconv3d_grad_benchmark(wrt, calls=steps, repeats=repeats))
  return records


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------


def _positive_ints(values: Sequence[str]) -> bool:
  return bool(values) and all(v.strip().isdigit() and int(v) > 0 for v in values)


def define_flags() -> None:
  flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes of the train_step benchmark.")
  flags.DEFINE_integer(
    "repeats", 5, "Timed runs (train_step) or samples per variant (the others); medians are reported.", lower_bound=1
  )
  flags.DEFINE_integer(
    "steps", 20, "Train steps per timed run; calls per timed sample for the op benchmarks.", lower_bound=1
  )
  flags.DEFINE_list("only", list(BENCHMARKS), f"Which benchmarks to run, of {', '.join(BENCHMARKS)}.")
  # cli.parse_flags reads --config; here it is the model and optimizer of the train_step benchmark.
  config_flags.DEFINE_config_dict(
    "config", config_lib.base(), "Model and optimizer of the train_step benchmark (--config.model.features='(16, 32)')."
  )
  flags.register_validator("batch_sizes", _positive_ints, message="must be a comma-separated list of positive ints")
  flags.register_validator(
    "only",
    lambda names: bool(names) and all(n in BENCHMARKS for n in names),
    message=f"must be a comma-separated list of {', '.join(BENCHMARKS)}",
  )


def _print_json(record: dict[str, Any]) -> None:
  bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
  if bad:
    raise RuntimeError(f"{record['benchmark']}: non-finite {', '.join(bad)}")
  print(json.dumps(record), flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}: use --only, --batch_sizes, --steps, --repeats, --config.KEY=VALUE")
  FLAGS = flags.FLAGS
  config_lib.validate(FLAGS.config)
  if "train_step" in FLAGS.only:
    info = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)
    tasks.check_model_fits(classifier, FLAGS.config, info)  # As train does, before any work.
  run_benchmarks(
    FLAGS.only,
    batch_sizes=[int(b) for b in FLAGS.batch_sizes],
    steps=FLAGS.steps,
    repeats=FLAGS.repeats,
    config=FLAGS.config,
    emit=_print_json,
  )


def run() -> None:
  """Console entry point (``python -m deconv_jax.benchmark``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
