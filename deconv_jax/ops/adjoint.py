"""The convolution and its adjoint, the transposed convolution ("deconvolution"): ``deconv`` is ``jax.vjp`` of ``conv``.

For a fixed kernel ``k`` the convolution ``x -> conv(x, k)`` is a linear map, and its adjoint is the
transposed convolution::

    <conv(x, k), y> == <x, deconv(y, k)>      for all x, y.

JAX hands us the adjoint of any linear map: it is the map's VJP. So ``deconv`` is not a separate kernel:
it is ``jax.vjp`` of ``conv`` with respect to its input, evaluated on ``y`` (`_vjp_of_conv`). Because the
map is linear, the VJP does not depend on the point it is taken at; under ``jit`` the forward conv is dead
code and XLA compiles the whole thing to one (input-dilated) convolution.

Both take 1, 2 or 3 spatial axes, read from the kernel: activations channels-last (``[N, W, C]``,
``[N, H, W, C]``, ``[N, D, H, W, C]``), kernels spatial-first (WIO, HWIO, DHWIO) and always the kernel of
the *forward* convolution ``[*kernel_size, Cin // groups, Cout]``. ``deconv`` takes the same array, so a
decoder can reuse an encoder's kernel as its exact adjoint. ``conv2d`` / ``deconv2d`` are the 2-D names.

The deconv's own derivatives follow from the same picture. In ``y`` it is the conv (the adjoint's
adjoint). In the kernel it is the conv's kernel gradient with input and output swapped,
``d/dk <deconv(y, k), g> == d/dk <conv(g, k), y>`` (`conv_kernel_grad`): a plain strided correlation,
where differentiating the input-dilated convolution directly gives XLA a dilated one that it runs many
times slower.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from deconv_jax.ops.shapes import (
  DIMENSION_NUMBERS,
  SPATIAL_NAMES,
  ExplicitPadding,
  IntOrPair,
  Padding,
  as_tuple,
  conv_output_shape,
  deconv_output_range,
  deconv_output_shape,
  effective_kernel,
  explicit_padding,
  is_int,
  spatial_axes,
)


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
  n = spatial_axes(kernel)
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
    dimension_numbers=DIMENSION_NUMBERS[n],
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
  the batch: the same values, many times faster on XLA:CPU than its 3-D convolution
  (``python -m deconv_jax.experiments.speed --only=deconv3d_kernel_grad`` measures it).
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
  n = spatial_axes(kernel)
  if y.ndim != n + 2:
    raise ValueError(f"y must be [N, *spatial, Cout] with the kernel's {n} spatial axes, got shape {y.shape}")
  strides, dilation = as_tuple(strides, n, "strides"), as_tuple(dilation, n, "dilation")
  batch, *out_size, c_out = y.shape
  *kernel_size, c_in_per_group, k_out = kernel.shape
  if k_out != c_out:
    raise ValueError(
      f"kernel has {k_out} output channels but y has {c_out}: kernel must be the forward conv's [*k, Cin, Cout] kernel"
    )
  if not is_int(groups) or groups < 1 or c_out % groups:
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
      raise ValueError(f"input_shape must be ({SPATIAL_NAMES[n]}) or (N, {SPATIAL_NAMES[n]}, C), got {input_shape}")
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
    for (lo, hi), o, s, k, size in zip(pads, out_size, strides, effective_kernel(kernel_size, dilation), in_size)
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
  n = spatial_axes(kernel)
  shape = tuple(input_shape[-(n + 1) :])
  size = math.prod(shape)
  basis = jnp.eye(size, dtype=kernel.dtype).reshape(size, *shape)
  columns = conv(basis, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
  return columns.reshape(size, -1).T
