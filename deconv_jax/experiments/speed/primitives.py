"""The design's claims about primitives: `ops` against the lax lowering of the same map, and XLA:CPU's two
convolution libraries. Each pair is checked to compute the same gradient, then timed alternately (A, B, A, B, ...),
so that the machine's noise hits both alike; ``ratio`` is ``median(A) / median(B)`` (> 1: B is faster)."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from deconv_jax import attribution, models, ops, xla_cpu
from deconv_jax.experiments.speed import timing


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
  grad_a, grad_b = (timing.jit_vdot_grad(f) for f in paths)
  rel = timing.check_same(f"deconv{n}d_{wrt}_grad", grad_a(*args), grad_b(*args))
  samples = timing.interleaved_ms([lambda: grad_a(*args), lambda: grad_b(*args)], repeats=repeats, calls=calls)
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
  return timing.pair_record(
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
  return timing.pair_record(
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
  rel = max(timing.check_same("conv_library", a, b) for a, b in zip(default(x, kernel)[1], chosen(x, kernel)[1]))
  samples = timing.interleaved_ms([lambda: default(x, kernel), lambda: chosen(x, kernel)], repeats=repeats, calls=calls)
  record = timing.pair_record(
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

  grad_a, grad_b, grad_c = (timing.jit_vdot_grad(f) for f in (reduce_window_path, ops_path, even_split_path))
  rel = timing.check_same("max_pool_grad", grad_a(x, ct), grad_b(x, ct))
  timing.check_same("max_pool_grad (even split)", grad_c(x, ct), grad_b(x, ct))
  samples = timing.interleaved_ms(
    [lambda: grad_a(x, ct), lambda: grad_b(x, ct), lambda: grad_c(x, ct)], repeats=repeats, calls=calls
  )
  record = timing.pair_record(
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


def attribute_with_rule_benchmark(
  *,
  batch: int = 64,
  method: str = "guided_backprop",
  model: models.CNN | None = None,
  calls: int = 20,
  repeats: int = 5,
) -> dict[str, Any]:
  """``method``'s map of each image's logit of class 0 on a ``[batch, 28, 28, 1]`` batch, the CNN of ``model``
  (by default the classic MNIST CNN), jitted. A: the field swap, the module's activation replaced by the rule's
  ReLU (``model.clone(activation=attribution.RELU_RULES[method])``) and one ``jax.vjp``, which is how an
  activation field made the rule possible; B: `attribution.attribute`, which finds the ReLUs in the function's
  jaxpr (`attribution.with_rule`). The transformation runs while tracing: after compilation B should cost what A
  does, ``ratio`` about 1.
  """
  model = model or models.CNN()
  x = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1), jnp.float32)
  variables = model.init(jax.random.key(1), x[:1])
  target = attribution.logit(0)

  @jax.jit
  def field_swap(variables, x):
    swapped = model.clone(activation=attribution.RELU_RULES[method])
    selected, vjp = jax.vjp(lambda v: target(attribution.activations(swapped, variables, v)), x)
    return vjp(jnp.ones_like(selected))[0]

  @jax.jit
  def with_rule(variables, x):
    return attribution.attribute(model, variables, x, target, method)

  rel = timing.check_same("attribute_with_rule", field_swap(variables, x), with_rule(variables, x))
  samples = timing.interleaved_ms(
    [lambda: field_swap(variables, x), lambda: with_rule(variables, x)], repeats=repeats, calls=calls
  )
  record = timing.pair_record(
    "attribute_with_rule", ("field_swap", "with_rule"), samples, rel, calls, input_shape=list(x.shape)
  )
  record["method"] = method
  return record
