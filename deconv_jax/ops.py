"""Convolution, its adjoint, and pooling: every primitive the models use.

The one idea of this codebase: for a fixed kernel ``k`` the convolution
``x -> conv2d(x, k)`` is a linear map, and its adjoint is the *transposed
convolution* ("deconvolution")::

    <conv2d(x, k), y> == <x, deconv2d(y, k)>      for all x, y.

JAX hands us the adjoint of any linear map: it is the map's VJP. So
``deconv2d`` is not a separate kernel: it is ``jax.vjp`` of ``conv2d`` with
respect to its input, evaluated on ``y``. Because the map is linear, the VJP
does not depend on the point it is taken at; under ``jit`` the forward conv is dead
code and XLA compiles the whole thing to one (input-dilated) convolution.

Conventions: activations NHWC, kernels HWIO and always the kernel of the
*forward* convolution ``[kh, kw, Cin // groups, Cout]``. ``deconv2d`` takes the
same array, so a decoder can reuse an encoder's kernel as its exact adjoint.

Shape arithmetic (Dumoulin & Visin, "A guide to convolution arithmetic"), per
spatial axis, with effective kernel size ``k' = d * (k - 1) + 1``::

    conv:    H_out = floor((H_in + lo + hi - k') / s) + 1
    deconv:  H_in  = (H_out - 1) * s - lo - hi + k' + output_padding,
             0 <= output_padding < s

For ``s > 1`` several ``H_in`` give the same ``H_out``; ``input_shape`` (or
PyTorch's ``output_padding``) picks one. With ``"SAME"`` the default is
``H_in = H_out * s``, as in ``lax.conv_transpose`` and flax ``ConvTranspose``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Pair = tuple[int, int]
IntOrPair = int | Sequence[int]
# "SAME" | "VALID" | p | (ph, pw) | ((top, bottom), (left, right))
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]
ExplicitPadding = tuple[Pair, Pair]

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


# ----------------------------------------------------------------------------
# Argument normalisation.
# ----------------------------------------------------------------------------


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def as_pair(value: IntOrPair, name: str, *, minimum: int = 1) -> Pair:
  """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``; anything else is a ValueError naming ``name``."""
  if _is_int(value):
    pair = (value, value)
  elif (
    isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2 and all(_is_int(v) for v in value)
  ):
    pair = (int(value[0]), int(value[1]))
  else:
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
  if min(pair) < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
  return pair


def _is_same(padding: Padding) -> bool:
  return isinstance(padding, str) and padding.upper() == "SAME"


def _effective_kernel(kernel_hw: Pair, dilation: Pair) -> Pair:
  return tuple(d * (k - 1) + 1 for k, d in zip(kernel_hw, dilation))  # type: ignore[return-value]


def explicit_padding(
  padding: Padding,
  input_hw: Sequence[int],
  kernel_hw: Sequence[int],
  strides: IntOrPair = 1,
  dilation: IntOrPair = 1,
) -> ExplicitPadding:
  """Resolves any padding form to ``((top, bottom), (left, right))`` for a forward conv.

  ``"SAME"`` pads so that ``H_out = ceil(H_in / s)``, the smaller half before
  (XLA's rule); ``"VALID"`` pads nothing; ``p`` pads ``p`` on every side;
  ``(ph, pw)`` pads ``ph`` top and bottom, ``pw`` left and right.
  """
  strides, dilation = as_pair(strides, "strides"), as_pair(dilation, "dilation")
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0), (0, 0))
    if mode == "SAME":
      pads = []
      for n, k, s in zip(input_hw, _effective_kernel(tuple(kernel_hw), dilation), strides):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)  # type: ignore[return-value]
    raise ValueError(f"padding must be 'SAME', 'VALID', an int, a pair or ((lo, hi), (lo, hi)), got {padding!r}")
  if _is_int(padding) or (isinstance(padding, Sequence) and len(padding) == 2 and all(_is_int(p) for p in padding)):
    ph, pw = as_pair(padding, "padding", minimum=0)  # type: ignore[arg-type]
    return ((ph, ph), (pw, pw))
  if (
    isinstance(padding, Sequence)
    and len(padding) == 2
    and all(isinstance(p, Sequence) and len(p) == 2 and all(_is_int(v) for v in p) for p in padding)
  ):
    return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[return-value]
  raise ValueError(f"padding must be 'SAME', 'VALID', an int, a pair or ((lo, hi), (lo, hi)), got {padding!r}")


# ----------------------------------------------------------------------------
# Shape arithmetic, both directions.
# ----------------------------------------------------------------------------


def conv_output_shape(
  input_hw: Sequence[int],
  kernel_hw: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
) -> Pair:
  """Spatial output size of ``conv2d``: ``H_out = floor((H_in + lo + hi - k') / s) + 1``.

  Raises ValueError when the (dilated) kernel does not fit the padded input.
  """
  strides, dilation = as_pair(strides, "strides"), as_pair(dilation, "dilation")
  pads = explicit_padding(padding, input_hw, kernel_hw, strides, dilation)
  out = []
  for axis, (n, k, s, (lo, hi)) in enumerate(
    zip(input_hw, _effective_kernel(tuple(kernel_hw), dilation), strides, pads)
  ):
    if n + lo + hi < k:
      raise ValueError(
        f"kernel of effective size {k} does not fit input size {n} padded by ({lo}, {hi}) on spatial axis {axis}"
      )
    out.append((n + lo + hi - k) // s + 1)
  return tuple(out)  # type: ignore[return-value]


def deconv_output_range(
  output_hw: Sequence[int],
  kernel_hw: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
) -> tuple[Pair, Pair]:
  """All input sizes ``H_in`` (inclusive range per axis) that ``conv2d`` maps to ``output_hw``.

  These are exactly the sizes ``deconv2d`` of a ``output_hw`` map may produce.
  """
  strides, dilation = as_pair(strides, "strides"), as_pair(dilation, "dilation")
  if _is_same(padding):
    return tuple(((o - 1) * s + 1, o * s) for o, s in zip(output_hw, strides))  # type: ignore[return-value]
  # Numeric padding does not depend on the input size.
  pads = explicit_padding(padding, (1, 1), kernel_hw, strides, dilation)
  out = []
  for o, k, s, (lo, hi) in zip(output_hw, _effective_kernel(tuple(kernel_hw), dilation), strides, pads):
    smallest = (o - 1) * s + k - lo - hi
    out.append((max(smallest, 1), smallest + s - 1))
  return tuple(out)  # type: ignore[return-value]


def deconv_output_shape(
  output_hw: Sequence[int],
  kernel_hw: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  output_padding: IntOrPair = 0,
) -> Pair:
  """Spatial size that ``deconv2d`` produces from an ``output_hw`` map (the conv's input size).

  ``"SAME"``: ``H_out * s`` (lax / flax convention). Numeric padding (PyTorch):
  ``(H_out - 1) * s - lo - hi + d * (k - 1) + 1 + output_padding``.
  """
  strides = as_pair(strides, "strides")
  output_padding = as_pair(output_padding, "output_padding", minimum=0)
  for s, op in zip(strides, output_padding):
    if op >= s:
      raise ValueError(
        f"output_padding must be smaller than strides per axis, got {output_padding} for strides {strides}"
      )
  if _is_same(padding) and any(output_padding):
    raise ValueError("output_padding only applies to numeric padding; with padding='SAME' pass input_shape")
  if _is_same(padding):
    ranges = deconv_output_range(output_hw, kernel_hw, strides=strides, padding=padding, dilation=dilation)
    return tuple(hi for _, hi in ranges)  # type: ignore[return-value]
  # The PyTorch formula itself, not the smallest size of deconv_output_range plus output_padding: that range's
  # lower end is clamped to 1, which would shift every size when lo + hi is large.
  pads = explicit_padding(padding, (1, 1), kernel_hw, strides, dilation)
  k_eff = _effective_kernel(tuple(kernel_hw), as_pair(dilation, "dilation"))
  sizes = []
  for axis, (o, k, s, (lo, hi), op) in enumerate(zip(output_hw, k_eff, strides, pads, output_padding)):
    n = (o - 1) * s - lo - hi + k + op
    if n < 1:
      raise ValueError(
        f"padding {padding!r} is too large for kernel {tuple(kernel_hw)}: (H_out - 1) * s - lo - hi + k' + "
        f"output_padding = {n} < 1 on spatial axis {axis}, so no input size gives output size {o}"
      )
    sizes.append(n)
  return tuple(sizes)  # type: ignore[return-value]


# ----------------------------------------------------------------------------
# The convolution and its adjoint.
# ----------------------------------------------------------------------------


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """2-D convolution (cross-correlation, as in every DL framework).

  Args:
    x: ``[N, H, W, Cin]``.
    kernel: ``[kh, kw, Cin // groups, Cout]`` (HWIO).
    strides, dilation: int or pair; ``dilation`` dilates the kernel.
    padding: ``"SAME"``, ``"VALID"``, int, pair, or ``((top, bottom), (left, right))``.
    groups: feature groups; ``Cin`` and ``Cout`` must divide by it.

  Returns:
    ``[N, H_out, W_out, Cout]`` with ``H_out`` from :func:`conv_output_shape`;
    ValueError if the dilated kernel does not fit the padded input.
  """
  strides, dilation = as_pair(strides, "strides"), as_pair(dilation, "dilation")
  pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  conv_output_shape(x.shape[1:3], kernel.shape[:2], strides=strides, padding=pads, dilation=dilation)
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=_DIMENSION_NUMBERS,
    feature_group_count=groups,
  )


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
  """Transposed convolution: the adjoint of ``x -> conv2d(x, kernel, ...)``.

  ``<conv2d(x, kernel), y> == <x, deconv2d(y, kernel)>`` for all ``x`` and ``y``.

  Args:
    y: ``[N, H_out, W_out, Cout]``, shaped like an output of ``conv2d``.
    kernel: the *forward* kernel ``[kh, kw, Cin // groups, Cout]``.
    strides, padding, dilation, groups: those of the forward ``conv2d``.
    input_shape: the forward conv's input shape, ``(H, W)`` or ``(N, H, W, Cin)``,
      choosing among the sizes that conv maps to ``H_out`` (for strides > 1).
    output_padding: PyTorch's way of making the same choice with numeric padding:
      ``H = (H_out - 1) * s - lo - hi + d * (k - 1) + 1 + output_padding``.

  Returns:
    ``[N, H, W, Cin]``.

  Note: jaxlib 0.10.2's XLA:CPU aborts (a CHECK, not an exception) when it
  compiles the transpose of a few rare convs: an axis with kernel 2, stride 2,
  padding lo = 1 and ``H = 2 * (H_out - 1)``, ``H_out >= 3``, ungrouped. This hits
  any conv gradient in JAX, not only this function (see ``tests/test_ops.py``).
  """
  strides, dilation = as_pair(strides, "strides"), as_pair(dilation, "dilation")
  n, *out_hw, c_out = y.shape
  kh, kw, c_in_per_group, k_out = kernel.shape
  if k_out != c_out:
    raise ValueError(
      f"kernel has {k_out} output channels but y has {c_out}: kernel must be the forward conv's HWIO kernel"
    )
  if groups < 1 or c_out % groups:
    raise ValueError(f"groups must be a positive divisor of the {c_out} output channels, got {groups}")
  if input_shape is None:
    in_hw = deconv_output_shape(
      out_hw, (kh, kw), strides=strides, padding=padding, dilation=dilation, output_padding=output_padding
    )
  else:
    if as_pair(output_padding, "output_padding", minimum=0) != (0, 0):
      raise ValueError("give either input_shape or output_padding, not both")
    input_shape = tuple(input_shape)
    if len(input_shape) == 4 and (input_shape[0] != n or input_shape[3] != c_in_per_group * groups):
      raise ValueError(
        f"input_shape {input_shape} does not match batch {n} and kernel input channels {c_in_per_group * groups}"
      )
    if len(input_shape) not in (2, 4):
      raise ValueError(f"input_shape must be (H, W) or (N, H, W, C), got {input_shape}")
    in_hw = input_shape[1:3] if len(input_shape) == 4 else input_shape
    allowed = deconv_output_range(out_hw, (kh, kw), strides=strides, padding=padding, dilation=dilation)
    if any(not lo <= v <= hi for v, (lo, hi) in zip(in_hw, allowed)):
      raise ValueError(
        f"input_shape {input_shape}: conv2d maps spatial size {tuple(in_hw)} to something other than "
        f"{tuple(out_hw)}; allowed (H, W) ranges are {allowed}"
      )

  forward = functools.partial(conv2d, kernel=kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
  # conv2d is linear in x, so its VJP is the same at every point: take it at 0.
  # Under jit the forward value is dead code and XLA removes it; called eagerly, it is computed once, on zeros.
  x0 = jnp.zeros((n, *in_hw, c_in_per_group * groups), jnp.result_type(y, kernel))
  _, forward_vjp = jax.vjp(forward, x0)
  (x,) = forward_vjp(y.astype(x0.dtype))
  return x


def conv_matrix(
  kernel: jax.Array,
  input_shape: Sequence[int],
  *,
  strides: IntOrPair = 1,
  padding: Padding = "SAME",
  dilation: IntOrPair = 1,
  groups: int = 1,
) -> jax.Array:
  """The dense matrix ``W`` of ``x -> conv2d(x, kernel, ...)`` on inputs of ``input_shape``.

  ``input_shape`` is ``(H, W, Cin)`` (or ``(1, H, W, Cin)``). With ``x`` and ``y``
  flattened in NHWC order, ``conv2d(x) == W @ x`` and ``deconv2d(y) == W.T @ y``.
  Only for small inputs: ``W`` has ``(H_out * W_out * Cout) x (H * W * Cin)`` entries.
  """
  h, w, c = input_shape[-3:]
  size = h * w * c
  basis = jnp.eye(size, dtype=kernel.dtype).reshape(size, h, w, c)
  columns = conv2d(basis, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups)
  return columns.reshape(size, -1).T


# ----------------------------------------------------------------------------
# Pooling.
# ----------------------------------------------------------------------------


def max_pool(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None) -> jax.Array:
  """Max pooling with VALID padding, ``[N, H, W, C] -> [N, H // p, W // p, C]`` for p = window = stride.

  Non-overlapping windows (the common case) are pooled by reshape-and-max: the
  same values as ``lax.reduce_window``, but its gradient is a cheap
  compare-and-select instead of XLA's select-and-scatter (5-6x faster on XLA:CPU:
  ``python -m deconv_jax.benchmark --only=max_pool_grad``). Trailing rows/columns
  that fill no window are dropped, as with VALID.
  Overlapping windows fall back to ``lax.reduce_window``.
  """
  window = as_pair(window, "window")
  strides = window if strides is None else as_pair(strides, "strides")
  n, h, w, c = x.shape
  if h < window[0] or w < window[1]:
    raise ValueError(f"max_pool window {window} is larger than the {h}x{w} input")
  if strides == window:
    (ph, pw) = window
    ho, wo = h // ph, w // pw
    x = x[:, : ho * ph, : wo * pw]
    return x.reshape(n, ho, ph, wo, pw, c).max(axis=(2, 4))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), "VALID")


def max_pool_switches(x: jax.Array, window: IntOrPair = 2, strides: IntOrPair | None = None) -> jax.Array:
  """Zeiler & Fergus's "switches": where each pooling window's maximum came from, as `max_pool` routes it.

  x ``[N, H, W, C]`` -> routing weights ``[N, h, w, C, kh, kw]`` (``h, w`` = `max_pool_output_shape`),
  each window's weights summing to 1. `unpool_with_switches` with these weights is exactly
  the VJP of ``max_pool(x, window, strides)``, ties included:

  * non-overlapping windows (``strides == window``, the reshape-and-max path): the weight
    is split evenly among the window's tied maxima, as the VJP of ``jnp.max`` does;
  * overlapping windows (the ``lax.reduce_window`` path): all weight goes to the first
    maximum in row-major window order, as XLA's select-and-scatter does.

  With continuous inputs ties have probability zero; after a ReLU they are common (an
  all-zero window), and there the two rules differ.
  """
  window = as_pair(window, "window")
  strides = window if strides is None else as_pair(strides, "strides")
  (kh, kw), (sh, sw) = window, strides
  h, w = max_pool_output_shape(x.shape[1:3], window, strides)
  patches = jnp.stack(
    [x[:, a : a + sh * (h - 1) + 1 : sh, b : b + sw * (w - 1) + 1 : sw] for a in range(kh) for b in range(kw)], axis=-1
  )  # [N, h, w, C, kh * kw]
  if strides == window:
    is_max = patches == patches.max(axis=-1, keepdims=True)
    weights = is_max / is_max.sum(axis=-1, keepdims=True)
  else:
    weights = jax.nn.one_hot(jnp.argmax(patches, axis=-1), kh * kw, dtype=x.dtype)
  return weights.astype(x.dtype).reshape(*weights.shape[:-1], kh, kw)


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
