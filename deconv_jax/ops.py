"""Convolution, its adjoint, and pooling: every primitive the models use.

The one idea of this codebase: for a fixed kernel ``k`` the convolution
``x -> conv(x, k)`` is a linear map, and its adjoint is the *transposed
convolution* ("deconvolution")::

    <conv(x, k), y> == <x, deconv(y, k)>      for all x, y.

JAX hands us the adjoint of any linear map: it is the map's VJP. So
``deconv`` is not a separate kernel: it is ``jax.vjp`` of ``conv`` with
respect to its input, evaluated on ``y``. Because the map is linear, the VJP
does not depend on the point it is taken at; under ``jit`` the forward conv is dead
code and XLA compiles the whole thing to one (input-dilated) convolution.

Both take 1, 2 or 3 spatial axes, read from the kernel: activations channels-last
(``[N, W, C]``, ``[N, H, W, C]``, ``[N, D, H, W, C]``), kernels spatial-first (WIO, HWIO,
DHWIO) and always the kernel of the *forward* convolution ``[*kernel_size, Cin // groups, Cout]``.
``deconv`` takes the same array, so a decoder can reuse an encoder's kernel as its exact
adjoint. ``conv2d`` / ``deconv2d`` are the 2-D names.

Shape arithmetic (Dumoulin & Visin, "A guide to convolution arithmetic"), per
spatial axis, with effective kernel size ``k' = d * (k - 1) + 1``::

    conv:    H_out = floor((H_in + lo + hi - k') / s) + 1
    deconv:  H_in  = (H_out - 1) * s - lo - hi + k' + output_padding,
             0 <= output_padding < max(s, d)      (PyTorch's rule)

For ``s > 1`` several ``H_in`` give the same ``H_out``; ``input_shape`` (or
PyTorch's ``output_padding``) picks one. PyTorch also accepts ``s <= output_padding < d``:
those last rows are read by no window of the conv, and the deconv is 0 there.
With ``"SAME"`` the default is ``H_in = H_out * s``, as in ``lax.conv_transpose`` and flax ``ConvTranspose``.

The deconv's own derivatives follow from the same picture. In ``y`` it is the conv (the
adjoint's adjoint). In the kernel it is the conv's kernel gradient with input and output
swapped, ``d/dk <deconv(y, k), g> == d/dk <conv(g, k), y>`` (`conv_kernel_grad`): a plain
strided correlation, where differentiating the input-dilated convolution directly gives XLA
a dilated one that it runs many times slower.

How a step is compiled is chosen by backend, never what it computes. Every conv is XLA's; on CPU
the steps are compiled with `compiler_options`, which give the convolutions to XLA's own kernels
rather than YNNPACK's (faster on these networks), and the train steps take a large batch's gradient
in chunks (`tasks.optim.mean_and_grad`). Inside ``with plain_xla():`` a step is traced and
compiled as stock JAX would (the reference the fast path is tested and timed against).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

Pair = tuple[int, int]
IntOrPair = int | Sequence[int]  # an int, or one int per spatial axis (a pair in 2-D)
# "SAME" | "VALID" | p | (p1, ..., pn) | ((lo1, hi1), ..., (lon, hin))
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]
ExplicitPadding = tuple[tuple[int, int], ...]

# Channels last, kernels [*kernel_size, in, out], by number of spatial axes.
_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
_SPATIAL_NAMES = {1: "W", 2: "H, W", 3: "D, H, W"}


# ----------------------------------------------------------------------------
# Argument normalisation.
# ----------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def as_tuple(value: IntOrPair, n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """``3 -> (3,) * n``; a sequence of ``n`` ints -> that tuple; anything else is a ValueError naming ``name``."""
  if _is_int(value):
    out = (value,) * n
  elif (
    isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n and all(_is_int(v) for v in value)
  ):
    out = tuple(int(v) for v in value)
  else:
    what = "a pair of ints" if n == 2 else f"a sequence of {n} ints"
    raise ValueError(f"{name} must be an int or {what}, got {value!r}")
  if min(out) < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
  return out


def as_pair(value: IntOrPair, name: str, *, minimum: int = 1) -> Pair:
  """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``; anything else is a ValueError naming ``name``."""
  return as_tuple(value, 2, name, minimum=minimum)  # type: ignore[return-value]


def _spatial_axes(kernel: jax.Array) -> int:
  n = kernel.ndim - 2
  if n not in _DIMENSION_NUMBERS:
    raise ValueError(f"kernel must be [*kernel_size, Cin // groups, Cout] with 1 to 3 spatial axes, got {kernel.shape}")
  return n


def _is_same(padding: Padding) -> bool:
  return isinstance(padding, str) and padding.upper() == "SAME"


def _effective_kernel(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
  return tuple(d * (k - 1) + 1 for k, d in zip(kernel_size, dilation))


def explicit_padding(
  padding: Padding,
  input_size: Sequence[int],
  kernel_size: Sequence[int],
  strides: IntOrPair = 1,
  dilation: IntOrPair = 1,
) -> ExplicitPadding:
  """Resolves any padding form to ``((lo, hi), ...)``, one pair per spatial axis, for a forward conv.

  The spatial axes are those of ``kernel_size``. ``"SAME"`` pads so that ``H_out = ceil(H_in / s)``,
  the smaller half before (XLA's rule); ``"VALID"`` pads nothing; ``p`` pads ``p`` on every side;
  ``(p1, ..., pn)`` (2-D: ``(ph, pw)``) pads ``pi`` before and after axis ``i``;
  ``((lo1, hi1), ..., (lon, hin))`` is explicit.
  """
  n = len(kernel_size)
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0),) * n
    if mode == "SAME":
      pads = []
      for size, k, s in zip(input_size, _effective_kernel(kernel_size, dilation), strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
  elif _is_int(padding) or (isinstance(padding, Sequence) and len(padding) == n and all(map(_is_int, padding))):
    return tuple((p, p) for p in as_tuple(padding, n, "padding", minimum=0))  # type: ignore[arg-type]
  elif (
    isinstance(padding, Sequence)
    and len(padding) == n
    and all(isinstance(p, Sequence) and len(p) == 2 and all(map(_is_int, p)) for p in padding)
  ):
    return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[misc]
  raise ValueError(f"padding must be 'SAME', 'VALID', an int, {n} ints or {n} (lo, hi) pairs, got {padding!r}")


# ----------------------------------------------------------------------------
# Shape arithmetic, both directions.
# ----------------------------------------------------------------------------


def conv_output_shape(
  input_size: Sequence[int],
  kernel_size: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
) -> tuple[int, ...]:
  """Spatial output size of `conv`: ``H_out = floor((H_in + lo + hi - k') / s) + 1`` per axis.

  Raises ValueError when the (dilated) kernel does not fit the padded input.
  """
  n = len(kernel_size)
  if len(input_size) != n:
    raise ValueError(f"input_size {tuple(input_size)} must have one size per kernel axis, {n}")
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  pads = explicit_padding(padding, input_size, kernel_size, strides, dilation)
  out = []
  for axis, (size, k, s, (lo, hi)) in enumerate(
    zip(input_size, _effective_kernel(kernel_size, dilation), strides, pads)
  ):
    if size + lo + hi < k:
      raise ValueError(
        f"kernel of effective size {k} does not fit input size {size} padded by ({lo}, {hi}) on spatial axis {axis}"
      )
    out.append((size + lo + hi - k) // s + 1)
  return tuple(out)


def deconv_output_range(
  output_size: Sequence[int],
  kernel_size: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
) -> tuple[tuple[int, int], ...]:
  """All input sizes ``H_in`` (inclusive range per axis) that `conv` maps to ``output_size``.

  These are the sizes `deconv` of an ``output_size`` map may produce with ``input_shape``.
  """
  n = len(kernel_size)
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  if _is_same(padding):
    return tuple(((o - 1) * s + 1, o * s) for o, s in zip(output_size, strides))
  # Numeric padding does not depend on the input size.
  pads = explicit_padding(padding, (1,) * n, kernel_size, strides, dilation)
  out = []
  for o, k, s, (lo, hi) in zip(output_size, _effective_kernel(kernel_size, dilation), strides, pads):
    smallest = (o - 1) * s + k - lo - hi
    out.append((max(smallest, 1), smallest + s - 1))
  return tuple(out)


def deconv_output_shape(
  output_size: Sequence[int],
  kernel_size: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  output_padding: IntOrPair = 0,
) -> tuple[int, ...]:
  """Spatial size that `deconv` produces from an ``output_size`` map (the conv's input size).

  ``"SAME"``: ``H_out * s`` (lax / flax convention). Numeric padding (PyTorch):
  ``(H_out - 1) * s - lo - hi + d * (k - 1) + 1 + output_padding``, with
  ``0 <= output_padding < max(s, d)`` per axis and a result of at least 1, exactly as PyTorch
  accepts. For ``output_padding < s`` the size is in `deconv_output_range`.
  """
  n = len(kernel_size)
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  output_padding = as_tuple(output_padding, n, "output_padding", minimum=0)
  bounds = tuple(max(s, d) for s, d in zip(strides, dilation))
  if any(op >= b for op, b in zip(output_padding, bounds)):
    raise ValueError(
      f"output_padding {output_padding} is out of range: 0 <= output_padding < max(strides, dilation) = {bounds}"
    )
  if _is_same(padding) and any(output_padding):
    raise ValueError("output_padding only applies to numeric padding; with padding='SAME' pass input_shape")
  if _is_same(padding):
    ranges = deconv_output_range(output_size, kernel_size, strides=strides, padding=padding, dilation=dilation)
    return tuple(hi for _, hi in ranges)
  # The PyTorch formula itself, not the smallest size of deconv_output_range plus output_padding: that range's
  # lower end is clamped to 1, which would shift every size when lo + hi is large.
  pads = explicit_padding(padding, (1,) * n, kernel_size, strides, dilation)
  sizes = []
  for axis, (o, k, s, (lo, hi), op) in enumerate(
    zip(output_size, _effective_kernel(kernel_size, dilation), strides, pads, output_padding)
  ):
    size = (o - 1) * s - lo - hi + k + op
    if size < 1:
      raise ValueError(
        f"padding {padding!r} is too large for kernel {tuple(kernel_size)}: (H_out - 1) * s - lo - hi + k' + "
        f"output_padding = {size} < 1 on spatial axis {axis}, so no input size gives output size {o}"
      )
    sizes.append(size)
  return tuple(sizes)


# ----------------------------------------------------------------------------
# The convolution and its adjoint.
# ----------------------------------------------------------------------------

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
# classifier's and the DCGAN's convolutions YNNPACK ran the forward pass and both gradients 1.07 to 1.39x
# slower than Eigen (`python -m deconv_jax.benchmark --only=conv_library`; the forward pass alone up to 2x),
# so the fast path keeps YNNPACK for dots and reductions and gives convolutions back to XLA.
_CPU_COMPILER_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}


def compiler_options(platform: str) -> dict[str, str] | None:
  """XLA compile options for a step compiled for ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``), for ``jax.jit``.

  On CPU, convolutions run XLA's own kernels instead of YNNPACK's; elsewhere, inside `plain_xla`, and with
  a jaxlib that does not know the option, None (XLA's defaults). Read when called: call it where the
  ``jax.jit`` is made, inside `plain_xla` for the plain program.
  """
  if platform != "cpu" or _PLAIN_XLA.get() or not _cpu_options_accepted():
    return None
  return dict(_CPU_COMPILER_OPTIONS)


@functools.cache
def _cpu_options_accepted() -> bool:
  """Whether this jaxlib's XLA:CPU takes `_CPU_COMPILER_OPTIONS` (an unknown option fails the compile)."""
  try:
    x = jax.device_put(jnp.zeros(()), jax.devices("cpu")[0])
    jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(x).compile()
  except Exception:  # any failure means: compile with XLA's defaults
    return False
  return True


def conv(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """Convolution (cross-correlation, as in every DL framework) over 1, 2 or 3 spatial axes.

  Args:
    x: ``[N, *spatial, Cin]``, e.g. ``[N, H, W, Cin]``.
    kernel: ``[*kernel_size, Cin // groups, Cout]`` (WIO, HWIO, DHWIO): its rank sets the spatial axes.
    strides, dilation: an int or one per spatial axis; ``dilation`` dilates the kernel.
    padding: ``"SAME"``, ``"VALID"``, an int, one int per axis, or ``((lo, hi), ...)`` per axis.
    groups: feature groups; ``Cin`` and ``Cout`` must divide by it.

  Returns:
    ``[N, *spatial_out, Cout]`` with ``spatial_out`` from :func:`conv_output_shape`;
    ValueError if the dilated kernel does not fit the padded input.
  """
  n = _spatial_axes(kernel)
  if x.ndim != n + 2:
    raise ValueError(f"x must be [N, *spatial, Cin] with the kernel's {n} spatial axes, got shape {x.shape}")
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  pads = explicit_padding(padding, x.shape[1:-1], kernel.shape[:n], strides, dilation)
  conv_output_shape(x.shape[1:-1], kernel.shape[:n], strides=strides, padding=pads, dilation=dilation)
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=_DIMENSION_NUMBERS[n],
    feature_group_count=groups,
  )


def conv_kernel_grad(
  x: jax.Array,
  g: jax.Array,
  kernel_size: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """The kernel gradient of `conv`: ``d/dk <conv(x, k, ...), g>``, ``[*kernel_size, Cin // groups, Cout]``.

  x ``[N, *spatial, Cin]``, g ``[N, *spatial_out, Cout]`` (shaped like ``conv(x, k)``). It does not
  depend on ``k`` (the conv is linear in it). In 1-D and 2-D it is XLA's own gradient; a 3-D one
  is the sum of 2-D ones, one per depth offset of the kernel, with the depth axis folded into
  the batch: the same values, about 10x faster on XLA:CPU than its 3-D convolution
  (``python -m deconv_jax.benchmark --only=deconv3d_kernel_grad``).
  """
  n = x.ndim - 2
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  pads = explicit_padding(padding, x.shape[1:-1], kernel_size, strides, dilation)
  if n == 3:
    (lo, hi), (s, d), out_depth = pads[0], (strides[0], dilation[0]), g.shape[1]
    x = lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
    g_2d = g.reshape(-1, *g.shape[2:])  # [N * D_out, H_out, W_out, Cout]
    plane_grad = functools.partial(
      conv_kernel_grad, kernel_size=kernel_size[1:], strides=strides[1:], padding=pads[1:], dilation=dilation[1:]
    )
    planes = []
    for a in range(kernel_size[0]):  # the depth-a plane of the kernel sees input depths a * d + i * s
      x_a = lax.slice_in_dim(x, a * d, a * d + (out_depth - 1) * s + 1, s, axis=1)
      planes.append(plane_grad(x_a.reshape(-1, *x_a.shape[2:]), g_2d, groups=groups))
    return jnp.stack(planes)
  kernel = jax.ShapeDtypeStruct((*kernel_size, x.shape[-1] // groups, g.shape[-1]), jnp.result_type(x, g))
  forward = functools.partial(conv, x, strides=strides, padding=pads, dilation=dilation, groups=groups)
  (grad,) = jax.linear_transpose(forward, kernel)(g)
  return grad


class _Conv(NamedTuple):
  """A forward conv's resolved arguments (hashable: the static part of `deconv`'s custom derivative)."""

  strides: tuple[int, ...]
  padding: ExplicitPadding
  dilation: tuple[int, ...]
  groups: int

  def __call__(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
    return conv(x, kernel, **self._asdict())


def _vjp_of_conv(y: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], forward: _Conv) -> jax.Array:
  """The adjoint itself: ``jax.vjp`` of ``x -> conv(x, kernel)`` on ``x_shape`` inputs, applied to ``y``."""
  # conv is linear in x, so its VJP is the same at every point: take it at 0.
  # Under jit the forward value is dead code and XLA removes it; called eagerly, it is computed once, on zeros.
  x0 = jnp.zeros(x_shape, y.dtype)
  _, forward_vjp = jax.vjp(lambda x: forward(x, kernel), x0)
  (x,) = forward_vjp(y)
  return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _transposed_conv(y: jax.Array, kernel: jax.Array, x_shape: tuple[int, ...], forward: _Conv) -> jax.Array:
  return _vjp_of_conv(y, kernel, x_shape, forward)


def _transposed_conv_jvp(x_shape, forward, primals, tangents):
  """The deconv is bilinear: its tangent is ``deconv(dy, k) + deconv(y, dk)``, each term written so that
  reverse mode (its transpose) runs the fast program: the conv of ``g`` for ``y``; for the kernel,
  ``conv_kernel_grad(g, y)``, since ``d/dk <deconv(y, k), g> == d/dk <conv(g, k), y>``."""
  (y, kernel), (dy, dkernel) = primals, tangents
  out = _vjp_of_conv(y, kernel, x_shape, forward)
  terms = []
  if not isinstance(dy, SymbolicZero):
    terms.append(_vjp_of_conv(dy, kernel, x_shape, forward))
  if not isinstance(dkernel, SymbolicZero):
    grad = lambda g: conv_kernel_grad(g, y, kernel.shape[:-2], **forward._asdict())  # linear in g
    (term,) = jax.linear_transpose(grad, jax.ShapeDtypeStruct(x_shape, out.dtype))(dkernel)
    terms.append(term)
  return out, functools.reduce(operator.add, terms) if terms else jnp.zeros_like(out)


_transposed_conv.defjvp(_transposed_conv_jvp, symbolic_zeros=True)


def deconv(
  y: jax.Array,
  kernel: jax.Array,
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
  input_shape: Sequence[int] | None = None,
  output_padding: IntOrPair = 0,
) -> jax.Array:
  """Transposed convolution: the adjoint of ``x -> conv(x, kernel, ...)``, over 1, 2 or 3 spatial axes.

  ``<conv(x, kernel), y> == <x, deconv(y, kernel)>`` for all ``x`` and ``y``.

  Args:
    y: ``[N, *spatial_out, Cout]``, shaped like an output of `conv`.
    kernel: the *forward* kernel ``[*kernel_size, Cin // groups, Cout]``.
    strides, padding, dilation, groups: those of the forward `conv`.
    input_shape: the forward conv's input shape, its spatial sizes or ``(N, *spatial, Cin)``,
      choosing among the sizes that conv maps to ``spatial_out`` (for strides > 1).
    output_padding: PyTorch's way of making the same choice with numeric padding:
      ``H = (H_out - 1) * s - lo - hi + d * (k - 1) + 1 + output_padding``,
      ``0 <= output_padding < max(s, d)``; rows no window reads (``output_padding >= s``) are 0.

  Returns:
    ``[N, *spatial, Cin]``, equal to PyTorch's ``conv_transpose{1,2,3}d`` (see `from_torch_conv_transpose`).

  Note: jaxlib 0.10.2's XLA:CPU aborts (a CHECK, not an exception) when it
  compiles the transpose of a few rare convs: an axis with kernel 2, stride 2,
  padding lo = 1 and ``H = 2 * (H_out - 1)``, ``H_out >= 3``, ungrouped. This hits
  any conv gradient in JAX, not only this function (see ``tests/test_ops.py``).
  """
  n = _spatial_axes(kernel)
  if y.ndim != n + 2:
    raise ValueError(f"y must be [N, *spatial, Cout] with the kernel's {n} spatial axes, got shape {y.shape}")
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  batch, *out_size, c_out = y.shape
  *kernel_size, c_in_per_group, k_out = kernel.shape
  if k_out != c_out:
    raise ValueError(
      f"kernel has {k_out} output channels but y has {c_out}: kernel must be the forward conv's [*k, Cin, Cout] kernel"
    )
  if not _is_int(groups) or groups < 1 or c_out % groups:
    raise ValueError(f"groups must be a positive divisor of the {c_out} output channels, got {groups}")
  if input_shape is None:
    in_size = deconv_output_shape(
      out_size, kernel_size, strides=strides, padding=padding, dilation=dilation, output_padding=output_padding
    )
  else:
    if as_tuple(output_padding, n, "output_padding", minimum=0) != (0,) * n:
      raise ValueError("give either input_shape or output_padding, not both")
    input_shape = tuple(input_shape)
    if len(input_shape) not in (n, n + 2):
      raise ValueError(f"input_shape must be ({_SPATIAL_NAMES[n]}) or (N, {_SPATIAL_NAMES[n]}, C), got {input_shape}")
    if len(input_shape) == n + 2 and (input_shape[0] != batch or input_shape[-1] != c_in_per_group * groups):
      raise ValueError(
        f"input_shape {input_shape} does not match batch {batch} and kernel input channels {c_in_per_group * groups}"
      )
    in_size = input_shape[1:-1] if len(input_shape) == n + 2 else input_shape
    allowed = deconv_output_range(out_size, kernel_size, strides=strides, padding=padding, dilation=dilation)
    if any(not lo <= v <= hi for v, (lo, hi) in zip(in_size, allowed)):
      raise ValueError(
        f"input_shape {input_shape}: conv maps spatial size {tuple(in_size)} to something other than "
        f"{tuple(out_size)}; allowed ranges per axis are {allowed}"
      )

  # The forward conv this is the adjoint of, on inputs of in_size. For output_padding >= s (PyTorch allows up to
  # max(s, d) - 1), the last rows are read by no window: that conv's padding stops short of them (hi < 0).
  pads = explicit_padding(padding, in_size, kernel_size, strides, dilation)
  pads = tuple(
    (lo, min(hi, (o - 1) * s + k - lo - size + s - 1))
    for (lo, hi), o, s, k, size in zip(pads, out_size, strides, _effective_kernel(kernel_size, dilation), in_size)
  )
  dtype = jnp.result_type(y, kernel)
  x_shape = (batch, *in_size, c_in_per_group * groups)
  forward = _Conv(strides, pads, dilation, groups)
  return _transposed_conv(y.astype(dtype), kernel.astype(dtype), x_shape, forward)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """`conv` in 2-D: x ``[N, H, W, Cin]``, HWIO kernel ``[kh, kw, Cin // groups, Cout]`` -> ``[N, h, w, Cout]``."""
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv2d takes x [N, H, W, C] and an HWIO kernel, got shapes {x.shape} and {kernel.shape}")
  return conv(x, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)


def deconv2d(
  y: jax.Array,
  kernel: jax.Array,
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
  input_shape: Sequence[int] | None = None,
  output_padding: IntOrPair = 0,
) -> jax.Array:
  """`deconv` in 2-D, the adjoint of `conv2d`: y ``[N, H_out, W_out, Cout]`` and its HWIO kernel -> ``[N, H, W, Cin]``.

  ``<conv2d(x, kernel), y> == <x, deconv2d(y, kernel)>``; ``input_shape`` is ``(H, W)`` or ``(N, H, W, Cin)``.
  """
  if y.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"deconv2d takes y [N, H, W, C] and an HWIO kernel, got shapes {y.shape} and {kernel.shape}")
  return deconv(
    y,
    kernel,
    strides=strides,
    padding=padding,
    dilation=dilation,
    groups=groups,
    input_shape=input_shape,
    output_padding=output_padding,
  )


def from_torch_conv_transpose(
  weight: Any,
  *,
  stride: IntOrPair = 1,
  padding: IntOrPair = 0,
  output_padding: IntOrPair = 0,
  groups: int = 1,
  dilation: IntOrPair = 1,
) -> tuple[jax.Array, dict[str, Any]]:
  """A PyTorch transposed conv's weight and arguments -> our forward kernel and the keyword arguments of `deconv`.

  ``weight`` is ``torch.nn.ConvTranspose{1,2,3}d``'s ``[Cin, Cout // groups, *kernel_size]`` (a tensor or any
  array); the rest are its arguments, as the module stores them. That weight is the forward conv's ``[O, I, *k]``,
  so the kernel is its transpose ``[*kernel_size, Cout // groups, Cin]``. For channels-last ``y``::

      kernel, kw = from_torch_conv_transpose(m.weight, stride=m.stride, padding=m.padding,
                                             output_padding=m.output_padding, groups=m.groups, dilation=m.dilation)
      deconv(y, kernel, **kw) + m.bias  ==  m(y moved to channels-first), moved to channels-last

  and ``conv(x, kernel, **kw without output_padding)`` is the conv it is the adjoint of. `models.Deconv.from_torch`
  does this for a whole module.
  """
  if hasattr(weight, "detach"):  # a torch tensor (torch itself is not needed here)
    weight = weight.detach().cpu().numpy()
  weight = jnp.asarray(weight)
  n = weight.ndim - 2
  if n not in _DIMENSION_NUMBERS:
    raise ValueError(f"weight must be [Cin, Cout // groups, *kernel_size] with 1 to 3 spatial axes, got {weight.shape}")
  if not _is_int(groups) or groups < 1 or weight.shape[0] % groups:
    raise ValueError(
      f"groups must be a positive divisor of the weight's {weight.shape[0]} input channels, got {groups}"
    )
  kernel = jnp.transpose(weight, (*range(2, n + 2), 1, 0))
  kwargs = {
    "strides": as_tuple(stride, n, "stride"),
    "padding": as_tuple(padding, n, "padding", minimum=0),
    "output_padding": as_tuple(output_padding, n, "output_padding", minimum=0),
    "dilation": as_tuple(dilation, n, "dilation"),
    "groups": groups,
  }
  return kernel, kwargs


def conv_matrix(
  kernel: jax.Array,
  input_shape: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """The dense matrix ``W`` of ``x -> conv(x, kernel, ...)`` on inputs of ``input_shape``.

  ``input_shape`` is ``(*spatial, Cin)`` (or ``(1, *spatial, Cin)``). With ``x`` and ``y``
  flattened in channels-last order, ``conv(x) == W @ x`` and ``deconv(y) == W.T @ y``.
  Only for small inputs: ``W`` has ``(prod(spatial_out) * Cout) x (prod(spatial) * Cin)`` entries.
  """
  n = _spatial_axes(kernel)
  shape = tuple(input_shape[-(n + 1) :])
  size = math.prod(shape)
  basis = jnp.eye(size, dtype=kernel.dtype).reshape(size, *shape)
  columns = conv(basis, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
  return columns.reshape(size, -1).T


# ----------------------------------------------------------------------------
# Pooling.
# ----------------------------------------------------------------------------


def max_pool(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None) -> jax.Array:
  """Max pooling with VALID padding, ``[N, H, W, C] -> [N, H // p, W // p, C]`` for p = window = stride.

  Its derivative routes each window's signal through one *switch* (Zeiler & Fergus): the
  window's first maximum in row-major order, as PyTorch's ``max_pool2d`` gradient does,
  ties included (an all-zero window after a ReLU sends everything to its first position).
  `max_pool_switches` returns the same switches.

  Non-overlapping windows (the common case) are pooled as the elementwise max of the window's
  ``ph * pw`` strided views of ``x``, with that derivative written as a custom JVP: each view's
  tangent where that view holds the window's first maximum (compares and selects, whose transpose
  is elementwise too). The same values and gradient as ``lax.reduce_window``, without XLA's
  select-and-scatter (many times faster on XLA:CPU:
  ``python -m deconv_jax.benchmark --only=max_pool_grad``). Trailing rows/columns that fill
  no window are dropped, as with VALID. Overlapping windows use ``lax.reduce_window``, whose
  select-and-scatter keeps the first maximum too.
  """
  window = as_pair(window, "window")
  strides = window if strides is None else as_pair(strides, "strides")
  h, w = x.shape[1:3]
  if h < window[0] or w < window[1]:
    raise ValueError(f"max_pool window {window} is larger than the {h}x{w} input")
  if strides == window:
    return _max_pool_views(x, window)
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), "VALID")


def _window_views(x: jax.Array, window: Pair) -> list[jax.Array]:
  """The ``ph * pw`` views ``x[:, a::ph, b::pw]`` (row-major window order), each ``[N, H // ph, W // pw, C]``."""
  (ph, pw), (n, h, w, c) = window, x.shape
  ho, wo = h // ph, w // pw
  return [
    lax.slice(x, (0, a, b, 0), (n, a + ph * (ho - 1) + 1, b + pw * (wo - 1) + 1, c), (1, ph, pw, 1))
    for a in range(ph)
    for b in range(pw)
  ]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _max_pool_views(x: jax.Array, window: Pair) -> jax.Array:
  """Max of each non-overlapping window: ``[N, H, W, C] -> [N, H // ph, W // pw, C]``."""
  return functools.reduce(jnp.maximum, _window_views(x, window))


@_max_pool_views.defjvp
def _max_pool_views_jvp(window, primals, tangents):
  # jnp.max's own derivative splits the signal evenly among tied maxima; the switch takes one: the first view
  # (in row-major window order) that holds the maximum and follows no earlier one that does.
  (x,), (dx,) = primals, tangents
  views = _window_views(x, window)
  pooled = functools.reduce(jnp.maximum, views)
  tangent, taken = None, None
  for view, dview in zip(views, _window_views(dx, window)):
    switch = view == pooled if taken is None else (view == pooled) & ~taken
    term = jnp.where(switch, dview, 0)
    tangent = term if tangent is None else tangent + term
    taken = switch if taken is None else taken | switch
  return pooled, tangent


def max_pool_switches(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None) -> jax.Array:
  """Zeiler & Fergus's "switches": where each pooling window's maximum came from, as `max_pool` routes it.

  x ``[N, H, W, C]`` -> one-hot routing weights ``[N, h, w, C, kh, kw]`` (``h, w`` = `max_pool_output_shape`):
  1 at the window's first maximum in row-major window order, 0 elsewhere, for overlapping and
  non-overlapping windows alike. `unpool_with_switches` with these weights is exactly the VJP of
  ``max_pool(x, window, strides)``, and PyTorch's ``max_pool2d`` gradient, ties included. With
  continuous inputs ties have probability zero; after a ReLU they are common (an all-zero window).
  """
  window = as_pair(window, "window")
  strides = window if strides is None else as_pair(strides, "strides")
  (kh, kw), (sh, sw) = window, strides
  h, w = max_pool_output_shape(x.shape[1:3], window, strides)
  patches = jnp.stack(
    [x[:, a : a + sh * (h - 1) + 1 : sh, b : b + sw * (w - 1) + 1 : sw] for a in range(kh) for b in range(kw)], axis=-1
  )  # [N, h, w, C, kh * kw]
  weights = jax.nn.one_hot(jnp.argmax(patches, axis=-1), kh * kw, dtype=x.dtype)  # argmax: the first maximum
  return weights.reshape(*weights.shape[:-1], kh, kw)


def unpool_with_switches(
  y: jax.Array, switches: jax.Array, input_hw: Sequence[int], strides: IntOrPair | None = None
) -> jax.Array:
  """Unpooling: each pooled value goes back to where its window's max was (Zeiler & Fergus 2014).

  y ``[N, h, w, C]``, switches ``[N, h, w, C, kh, kw]`` from `max_pool_switches` ->
  ``[N, H, W, C]`` with ``(H, W) = input_hw``; values of overlapping windows add, positions
  no window covers are 0. Identity: ``unpool_with_switches(g, max_pool_switches(x, p, s), x.shape[1:3], s)
  == jax.vjp(lambda x: max_pool(x, p, s), x)[1](g)[0]``.
  """
  kh, kw = switches.shape[-2:]
  sh, sw = (kh, kw) if strides is None else as_pair(strides, "strides")
  n, h, w, c = y.shape
  if switches.shape[:4] != y.shape:
    raise ValueError(f"switches of shape {switches.shape} do not match pooled values of shape {y.shape}")
  values = y[..., None, None] * switches  # [N, h, w, C, kh, kw]
  x = jnp.zeros((n, *input_hw, c), y.dtype)
  for a in range(kh):
    for b in range(kw):
      x = x.at[:, a : a + sh * (h - 1) + 1 : sh, b : b + sw * (w - 1) + 1 : sw].add(values[..., a, b])
  return x


def max_pool_output_shape(input_hw: Sequence[int], window: IntOrPair = 2, strides: IntOrPair | None = None) -> Pair:
  """``H_out = floor((H - p) / s) + 1``, VALID."""
  window = as_pair(window, "window")
  strides = window if strides is None else as_pair(strides, "strides")
  return tuple((n - p) // s + 1 for n, p, s in zip(input_hw, window, strides))  # type: ignore[return-value]


# ----------------------------------------------------------------------------
# Up-sampling without a transposed convolution.
# ----------------------------------------------------------------------------


def depth_to_space(x_NHWC: jax.Array, r: int) -> jax.Array:
  """Sub-pixel shuffle (Shi et al. 2016): each pixel's channels become an ``r x r`` block of pixels.

  ``[N, H, W, r * r * C] -> [N, H * r, W * r, C]`` with, for ``0 <= i, j < r``::

      out[n, h * r + i, w * r + j, c] == x[n, h, w, (i * r + j) * C + c]

  i.e. the channel axis is read as ``(i, j, c)`` in row-major order: TensorFlow's
  ``tf.nn.depth_to_space`` ("DCR") layout. PyTorch's ``pixel_shuffle`` reads ``(c, i, j)`` instead.
  A stride-1 conv to ``r * r * C`` channels followed by this is an r-times up-sampling layer
  (the "sub-pixel convolution", itself a transposed convolution with stride ``r``).
  """
  if x_NHWC.ndim != 4:
    raise ValueError(f"x_NHWC must be [N, H, W, C], got shape {x_NHWC.shape}")
  if not _is_int(r) or r < 1:
    raise ValueError(f"r must be a positive int, got {r!r}")
  n, h, w, c = x_NHWC.shape
  if c % (r * r):
    raise ValueError(f"x_NHWC has {c} channels, not a multiple of r * r = {r * r}")
  x = x_NHWC.reshape(n, h, w, r, r, c // (r * r))  # [N, H, W, i, j, C]
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, c // (r * r))


def resize(x: jax.Array, factor: IntOrPair, method: str) -> jax.Array:
  """Up-samples ``[N, H, W, C] -> [N, H * fh, W * fw, C]`` by integer factors, with ``jax.image.resize``.

  ``method``: ``"nearest"`` repeats each pixel ``fh x fw`` times (equal to ``jnp.repeat`` along H
  and W); ``"bilinear"`` interpolates between pixel centres (half-pixel convention, edges clamped).
  Followed by a stride-1 conv this is the "resize-convolution" of Odena et al. (Distill, 2016).
  """
  if x.ndim != 4:
    raise ValueError(f"x must be [N, H, W, C], got shape {x.shape}")
  fh, fw = as_pair(factor, "factor")
  if method not in ("nearest", "bilinear"):
    raise ValueError(f"method must be 'nearest' or 'bilinear', got {method!r}")
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, h * fh, w * fw, c), method)
