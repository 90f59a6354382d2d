r"""Measured speed: ``python -m deconv_jax.benchmark`` prints one JSON object per line on stdout.

Seven benchmarks (``--only`` picks among them):

- ``train_step``: whole train steps, as `train` compiles them for one device
  (``jax.jit`` with the state donated), on synthetic ``[B, 28, 28, 1]`` data
  already on the device (no input pipeline): the classifier of ``--config``
  (by default the CNN with Adam: the peers' ``seedcnn``) at each of
  ``--batch_sizes``, the peers' DCGAN (`peers_dcgan_config`) at batch 128 and
  ``configs/gan.py`` at its batch size. Each is timed twice, alternately: the
  fast path (what `train` runs) and the plain one (traced inside
  ``xla_cpu.plain_xla()`` and compiled with XLA's default options: the program stock
  JAX compiles; both run in one process, which sets `xla_cpu` as `train` does). The
  records follow the protocol of the peers benchmark in ``../shared/bench/peers``
  (``kind``, ``framework`` = ``project``, ``mode`` = the path, ``model``,
  ``batch``, ``ips_median``, ``ips_min``, ``ips_max``, ``first_step_s``,
  ``achieved_gflops``, ...), so its ``summarize.py`` tables them beside the peers.
- ``op_profile``: where the time goes: for the same train steps and paths, the
  top XLA ops per step from a ``jax.profiler`` trace, each with what it computes
  (``dot f32[3872,64]``, ``convolution ... window ...``) and its share of the step.
- ``conv_library``: each convolution of those steps (`CONV_LIBRARY_CASES`), forward
  and both gradients, compiled with XLA's default options (on CPU: YNNPACK's
  convolution) and with `xla_cpu.compiler_options` (XLA's own), alternately.
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

Every record carries ``backend`` and ``devices``. Examples::

  python -m deconv_jax.benchmark --only=train_step > project.jsonl
  python -m deconv_jax.benchmark --only=train_step --train_models=seedcnn --batch_sizes=256 --paths=fast
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import glob
import gzip
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import tempfile
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

from deconv_jax import cli, ops, tasks, xla_cpu
from deconv_jax import config as config_lib
from deconv_jax.tasks import classifier

BENCHMARKS = (
  "train_step",
  "op_profile",
  "conv_library",
  "deconv_kernel_grad",
  "max_pool_grad",
  "deconv3d_kernel_grad",
  "deconv3d_input_grad",
)


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
# Train steps, in the peers' protocol (../shared/bench/peers/common.py).
# ----------------------------------------------------------------------------

# The models the peers benchmark times: its names, and the project's task and config for each.
PEERS_DCGAN = "gan"  # G: Dense 7x7x128, ConvT 64 4x4 s2, ConvT 1 4x4 s2 (tanh); D: Conv 64, Conv 128 4x4 s2, Dense 1
GAN_CONFIG = "configs/gan.py"


def peers_dcgan_config() -> ml_collections.ConfigDict:
  """The peers' DCGAN as a project config: unconditional, no batch norm, Adam 2e-4 (b1 0.5) for G and D, batch 128."""
  c = config_lib.base()
  c.task = "gan"
  c.batch_size = 128
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.b1 = "adam", 2e-4, 0.5
  g = c.generator
  g.latent_dim, g.base_size, g.base_features, g.features = 100, 7, 128, (64,)
  g.upsample, g.kernel_size, g.batch_norm, g.output_activation = "transpose", 4, False, "tanh"
  g.conditional, g.out_strides = False, 2  # the second transposed conv makes the image
  c.discriminator.features, c.discriminator.kernel_size = (64, 128), 4
  return c


def gan_config() -> ml_collections.ConfigDict:
  """``configs/gan.py``'s config (the README's GAN), read from the repository."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), GAN_CONFIG)
  spec = importlib.util.spec_from_file_location("gan_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _task_and_config(model: str, config: ml_collections.ConfigDict | None) -> tuple[Any, ml_collections.ConfigDict]:
  """The task and config of a train-step ``model``: the classifier of ``config`` (default `config.base()`) for
  ``"seedcnn"``, else the GAN of `peers_dcgan_config` or `gan_config`."""
  if model == "seedcnn":
    return classifier, config_lib.base() if config is None else config
  return tasks.get("gan"), peers_dcgan_config() if model == PEERS_DCGAN else gan_config()


def _peers_dense_flops(model: str) -> int | None:
  """FLOPs per image of one train step as the peers count them: 2 x MACs of every conv and dense, padding taps too.

  The classifier step is 3 forward passes' worth; the DCGAN step per batch element is 3 G + 8 D passes
  (G forward once; D on real and fake, forward, input and kernel gradients; D forward and input gradient
  for G's update). Only for the peers' two networks; None for others.
  """
  if model == "seedcnn":
    h, c, macs = 28, 1, 0
    for cout in (32, 64, 128):
      h -= 2
      macs += h * h * cout * 9 * c
      c, h = cout, h // 2
    return 3 * 2 * (macs + h * h * c * 512 + 512 * 10)
  if model == PEERS_DCGAN:
    g = 100 * 7 * 7 * 128 + 7 * 7 * 128 * 16 * 64 + 14 * 14 * 64 * 16
    d = 14 * 14 * 64 * 16 + 7 * 7 * 128 * 16 * 64 + 7 * 7 * 128
    return 3 * 2 * g + 8 * 2 * d
  return None


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


class _TimedStep:
  """One task's compiled train step on fixed synthetic data, stepped and timed as the peers' ``run_bench`` does."""

  def __init__(self, task: Any, config: ml_collections.ConfigDict, batch_size: int, plain: bool, seed: int = 0):
    info = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)
    rng = np.random.default_rng(seed)
    self.batch = {
      "image": jnp.asarray(rng.random((batch_size, *info.image_shape), np.float32)),
      "label": jnp.asarray(rng.integers(0, info.num_classes, (batch_size,), np.int32)),
    }
    self.rng = jax.random.key(seed)
    self.batch_size, self.plain = batch_size, plain
    with self._context():  # a new function for each path: jit traces it inside its own context
      self.state = jax.jit(lambda r: task.create_state(config, r, info, total_steps=1000))(jax.random.key(seed))
      self.step_fn = jax.jit(
        lambda s, b, r: task.train_step(s, b, r, config=config),
        donate_argnums=(0,),
        compiler_options=xla_cpu.compiler_options(jax.default_backend()),
      )
      self.xla_flops = _xla_flops(self.step_fn.lower(self.state, self.batch, self.rng).compile())

  def _context(self):
    return xla_cpu.plain_xla() if self.plain else contextlib.nullcontext()

  def step(self) -> Any:
    with self._context():
      self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
    return metrics

  def sync(self, metrics: Any) -> None:
    jax.block_until_ready((self.state, metrics))


def _xla_flops(compiled: Any) -> float | None:
  try:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])
  except (KeyError, TypeError, IndexError, AttributeError):  # not every backend counts
    return None


def train_step_benchmark(
  model: str,
  batch_size: int,
  *,
  repeats: int = 5,
  target_s: float = 3.0,
  config: ml_collections.ConfigDict | None = None,
  paths: Sequence[str] = ("fast", "plain"),
) -> list[dict[str, Any]]:
  """Images/s of one train step, the fast path beside the plain one: one peers-protocol record per path.

  ``model``: ``"seedcnn"`` (the classifier of ``config``, by default `config.base()`),
  ``"gan"`` (`peers_dcgan_config`) or ``"configs/gan.py"`` (`gan_config`). ``"plain"`` is the
  same step traced inside ``xla_cpu.plain_xla()`` and compiled with XLA's default options, no chunks.
  Protocol (the peers' ``run_bench``): the first step (trace, compile, run) and the second are
  timed, 3 warm-up steps, a 3-step calibration sets ``n`` so that ``n`` steps take about
  ``target_s``; then ``repeats`` runs of ``n`` steps, blocked on the last step's state, the paths
  alternating (A, B, A, B, ...) so the machine's noise hits both alike.
  """
  task, config = _task_and_config(model, config)
  runs = []
  for path in paths:
    start = time.perf_counter()
    timed = _TimedStep(task, config, batch_size, plain=path == "plain")
    timed.sync(timed.step())
    first = time.perf_counter() - start
    start = time.perf_counter()
    timed.sync(timed.step())
    second = time.perf_counter() - start
    for _ in range(3):
      metrics = timed.step()
    timed.sync(metrics)
    start = time.perf_counter()
    for _ in range(3):
      metrics = timed.step()
    timed.sync(metrics)
    n = max(3, math.ceil(target_s / max((time.perf_counter() - start) / 3, 1e-9)))
    runs.append((path, timed, first, second, n, []))
  for _ in range(repeats):
    for _, timed, _, _, n, seconds in runs:
      start = time.perf_counter()
      for _ in range(n):
        metrics = timed.step()
      timed.sync(metrics)
      seconds.append(time.perf_counter() - start)

  records = []
  for path, timed, first, second, n, seconds in runs:
    ips = [n * batch_size / t for t in seconds]
    # FLOPs as the peers count them for their two networks; for others, XLA's count of the compiled
    # step (it skips padding taps, and on GPU leaves out the convolutions that cuDNN runs).
    xla_per_image = None if timed.xla_flops is None else timed.xla_flops / batch_size
    dense = _peers_dense_flops(model) if model != "seedcnn" or _is_default_cnn(config) else None
    per_image, flops_source = (dense, "peers_dense_count") if dense else (xla_per_image, "xla_cost_analysis")
    records.append(
      {
        "kind": "train_step",
        "framework": "project",
        "mode": path,
        "model": model,
        "batch": batch_size,
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": _versions(),
        **_platform(),
        "xla_flops_per_image": xla_per_image,
        "first_step_s": round(first, 4),
        "second_step_s": round(second, 4),
        "steps_per_repeat": n,
        "repeats": repeats,
        "repeat_s": [round(t, 4) for t in seconds],
        "ips_all": [round(v, 1) for v in ips],
        "ips_median": round(statistics.median(ips), 1),
        "ips_min": round(min(ips), 1),
        "ips_max": round(max(ips), 1),
        "step_ms_median": round(1e3 * statistics.median(seconds) / n, 3),
        "train_flops_per_image": per_image,
        "flops_source": flops_source,
        "achieved_gflops": None if per_image is None else round(statistics.median(ips) * per_image / 1e9, 2),
      }
    )
  return records


def _hlo_ops(hlo_text: str) -> dict[str, str]:
  """``{instruction name: what it computes}`` for the entry computation's instructions of a compiled HLO module.

  A fusion is described by its root (or its first convolution / dot): opcode, shape and conv window.
  """
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line) if not line.startswith(" ") else None
    if header:
      current = bodies.setdefault(header.group(1), [])
    elif current is not None:
      current.append(line.strip())

  def describe(instruction: str) -> str:
    shape = re.match(r"[^=]+= (\S+)", instruction)
    opcode = re.search(r"= \S+ ([\w\-]+)\(", instruction)
    window = re.search(r"window=\{([^}]*)\}", instruction)
    layout_free = re.sub(r"\{[^}]*\}", "", shape.group(1)) if shape else ""
    text = f"{opcode.group(1) if opcode else '?'} {layout_free}"
    return text + (f" window {window.group(1)}" if window else "")

  ops_: dict[str, str] = {}
  for lines in bodies.values():
    for instruction in lines:
      name = re.match(r"(?:ROOT )?%?([\w.\-]+) = ", instruction)
      if not name:
        continue
      callee = re.search(r"calls=%?([\w.\-]+)", instruction)
      body = bodies.get(callee.group(1), []) if callee else []
      key = [i for i in body if re.search(r" (convolution|dot)\(", i)] or [i for i in body if i.startswith("ROOT")]
      ops_.setdefault(name.group(1), describe(key[0] if key else instruction))
  return ops_


def op_profile_benchmark(
  model: str,
  batch_size: int,
  *,
  path: str = "fast",
  steps: int = 10,
  top: int = 12,
  config: ml_collections.ConfigDict | None = None,
) -> list[dict[str, Any]]:
  """Where one train step's time goes, per XLA op: ``path``'s ``top`` kinds of op by time, from a trace.

  Traces ``steps`` steps with ``jax.profiler`` (a Perfetto trace) and sums the durations of the compiled
  ops that compute the same thing (``what``: opcode, shape, conv window; ``ops`` of them, e.g. one per
  batch chunk), per step. Ops can run at once on several cores, so shares can add up to more than 1;
  ``step_ms`` is the wall time of a step while traced.
  """
  task, config = _task_and_config(model, config)
  timed = _TimedStep(task, config, batch_size, plain=path == "plain")
  for _ in range(3):
    metrics = timed.step()
  timed.sync(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(steps):
      metrics = timed.step()
    timed.sync(metrics)
    step_ms = (time.perf_counter() - start) / steps * 1e3
    jax.profiler.stop_trace()
    (path,) = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
    with gzip.open(path) as f:
      trace = json.load(f)
  described = _hlo_ops(timed.step_fn.lower(timed.state, timed.batch, timed.rng).compile().as_text())
  # Ops that compute the same thing (one per batch chunk, say) are summed together.
  totals: dict[str, list] = {}
  for event in trace["traceEvents"] if isinstance(trace, dict) else trace:
    what = described.get(event.get("name"))
    if event.get("ph") == "X" and what is not None:
      entry = totals.setdefault(what, [0.0, set()])
      entry[0] += event.get("dur", 0.0) / 1e3
      entry[1].add(event["name"])
  ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
  return [
    {
      "kind": "op_profile",
      "framework": "project",
      "mode": path,
      "model": model,
      "batch": batch_size,
      "what": what,
      "ops": len(names),
      "ms_per_step": round(ms / steps, 3),
      "share_of_step": round(ms / steps / step_ms, 3),
      "step_ms": round(step_ms, 2),
      **_platform(),
    }
    for what, (ms, names) in ranked
  ]


def _is_default_cnn(config: ml_collections.ConfigDict) -> bool:
  return config.model.to_dict() == config_lib.base().model.to_dict()


# ----------------------------------------------------------------------------
# The design claims: lax/flax primitives against the paths of `ops`.
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


# The convolutions of the train steps: the classifier's three (VALID, 3x3) at batch 32 and one chunk of it,
# the DCGAN discriminator's 4x4 stride-2 pair at batch 128; (x shape, kernel shape, stride, padding).
CONV_LIBRARY_CASES = (
  ((32, 28, 28, 1), (3, 3, 1, 32), 1, "VALID"),
  ((32, 13, 13, 32), (3, 3, 32, 64), 1, "VALID"),
  ((32, 5, 5, 64), (3, 3, 64, 128), 1, "VALID"),
  ((128, 28, 28, 1), (4, 4, 1, 64), 2, "SAME"),
  ((128, 14, 14, 64), (4, 4, 64, 128), 2, "SAME"),
)


def conv_library_benchmark(
  x_shape: Sequence[int], kernel_shape: Sequence[int], strides: int, padding: str, *, calls: int = 20, repeats: int = 5
) -> dict[str, Any]:
  """One conv's forward pass and both gradients, compiled with XLA's defaults and with `xla_cpu.compiler_options`.

  A: XLA's defaults (on CPU, jaxlib 0.10 runs the conv with YNNPACK); B: ``xla_cpu.compiler_options`` of this
  backend (on CPU, XLA's own Eigen kernels; elsewhere the defaults again, so ``ratio`` is about 1). Each
  call is ``jax.value_and_grad`` of ``<ops.conv(x, k), ct>`` in ``x`` and ``k``, jitted; the two are checked
  to give the same gradients, then timed alternately.
  """
  kx, kk, kc = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, tuple(x_shape), jnp.float32)
  kernel = jax.random.normal(kk, tuple(kernel_shape), jnp.float32)
  conv = functools.partial(ops.conv, strides=strides, padding=padding)
  ct = jax.random.normal(kc, jax.eval_shape(conv, x, kernel).shape, jnp.float32)
  fn = jax.value_and_grad(lambda x, k: jnp.vdot(conv(x, k), ct), argnums=(0, 1))
  options = xla_cpu.compiler_options(jax.default_backend())
  default, chosen = (jax.jit(fn, compiler_options=o).lower(x, kernel).compile() for o in (None, options))
  rel = max(_check_same("conv_library", a, b) for a, b in zip(default(x, kernel)[1], chosen(x, kernel)[1]))
  samples = _interleaved_ms([lambda: default(x, kernel), lambda: chosen(x, kernel)], repeats=repeats, calls=calls)
  record = _pair_record(
    "conv_library",
    ("xla_default", "compiler_options"),
    samples,
    rel,
    calls,
    input_shape=list(x.shape),
    kernel_shape=list(kernel.shape),
    strides=strides,
    padding=padding,
  )
  record["options"] = options
  return record


def max_pool_grad_benchmark(
  *, shape: tuple[int, int, int, int] = (32, 26, 26, 32), window: int = 2, calls: int = 20, repeats: int = 5
) -> dict[str, Any]:
  """Input gradient of a ``window`` x ``window`` / stride ``window`` VALID max-pool of a ``shape`` (NHWC) map.

  A: ``lax.reduce_window(x, -inf, lax.max, ...)`` (select-and-scatter gradient);
  B: `ops.max_pool` (the max of strided views, one switch per window). The gradient is that of ``<pool(x), ct>`` in
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


TRAIN_MODELS = ("seedcnn", PEERS_DCGAN, GAN_CONFIG)
PATHS = ("fast", "plain")


def run_benchmarks(
  only: Sequence[str] = BENCHMARKS,
  *,
  batch_sizes: Sequence[int] = (32, 256),
  train_models: Sequence[str] = TRAIN_MODELS,
  paths: Sequence[str] = PATHS,
  target_s: float = 3.0,
  steps: int = 20,
  repeats: int = 5,
  config: ml_collections.ConfigDict | None = None,
  emit: Callable[[dict[str, Any]], object] | None = None,
) -> list[dict[str, Any]]:
  """Runs the benchmarks named in ``only`` (in `BENCHMARKS` order); ``emit`` sees each record as it is made.

  ``train_step`` times each of ``train_models``: the classifier at every one of ``batch_sizes``, the peers'
  DCGAN at batch 128, ``configs/gan.py`` at its own batch size.
  """
  records = []

  def add(record: dict[str, Any]) -> None:
    records.append(record)
    if emit is not None:
      emit(record)

  train_runs = [("seedcnn", b) for b in batch_sizes] if "seedcnn" in train_models else []
  train_runs += [(PEERS_DCGAN, 128)] if PEERS_DCGAN in train_models else []
  train_runs += [(GAN_CONFIG, gan_config().batch_size)] if GAN_CONFIG in train_models else []
  if "train_step" in only:
    for model, batch_size in train_runs:
      for record in train_step_benchmark(
        model, batch_size, repeats=repeats, target_s=target_s, config=config, paths=paths
      ):
        add(record)
  if "op_profile" in only:
    for model, batch_size in train_runs:
      for path in paths:
        for record in op_profile_benchmark(model, batch_size, path=path, config=config):
          add(record)
  if "conv_library" in only:
    for case in CONV_LIBRARY_CASES:
      add(conv_library_benchmark(*case, repeats=repeats))
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
  flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes of the classifier's train step.")
  flags.DEFINE_list("train_models", list(TRAIN_MODELS), f"Train steps to time, of {', '.join(TRAIN_MODELS)}.")
  flags.DEFINE_list("paths", list(PATHS), "Paths of each train step to time or profile: fast, plain (plain_xla).")
  flags.DEFINE_float(
    "target_s", 3.0, "Seconds per timed run of a train step (the peers' --target-s).", lower_bound=0.01
  )
  flags.DEFINE_integer(
    "repeats", 5, "Timed runs per train step, or samples per variant (the others); medians are reported.", lower_bound=1
  )
  flags.DEFINE_integer("steps", 20, "Calls per timed sample of the op benchmarks.", lower_bound=1)
  flags.DEFINE_list("only", list(BENCHMARKS), f"Which benchmarks to run, of {', '.join(BENCHMARKS)}.")
  # cli.parse_flags reads --config; here it is the model and optimizer of the classifier's train step.
  config_flags.DEFINE_config_dict(
    "config",
    config_lib.base(),
    "Model and optimizer of the classifier's train step (--config.model.features='(16, 32)').",
  )
  flags.register_validator("batch_sizes", _positive_ints, message="must be a comma-separated list of positive ints")
  for name, allowed in (("only", BENCHMARKS), ("train_models", TRAIN_MODELS), ("paths", PATHS)):
    flags.register_validator(
      name,
      lambda values, allowed=allowed: bool(values) and all(v in allowed for v in values),
      message=f"must be a comma-separated list of {', '.join(allowed)}",
    )


def _print_json(record: dict[str, Any]) -> None:
  bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
  if bad:
    raise RuntimeError(f"{record.get('benchmark') or record['model']}: non-finite {', '.join(bad)}")
  print(json.dumps(record), flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}: use --only, --batch_sizes, --steps, --repeats, --config.KEY=VALUE")
  FLAGS = flags.FLAGS
  config_lib.validate(FLAGS.config)
  xla_cpu.reuse_freed_memory()  # as train does: both paths of a step run in a process set up like train's
  if "train_step" in FLAGS.only:
    info = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)
    tasks.check_model_fits(classifier, FLAGS.config, info)  # As train does, before any work.
  run_benchmarks(
    FLAGS.only,
    batch_sizes=[int(b) for b in FLAGS.batch_sizes],
    train_models=FLAGS.train_models,
    paths=FLAGS.paths,
    target_s=FLAGS.target_s,
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
