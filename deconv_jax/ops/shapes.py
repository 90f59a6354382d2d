"""Shapes of convolutions and their adjoints: argument forms, padding, and the size arithmetic both ways.

Per spatial axis, with effective kernel size ``k' = d * (k - 1) + 1`` (Dumoulin & Visin, "A guide to
convolution arithmetic")::

    conv:    H_out = floor((H_in + lo + hi - k') / s) + 1
    deconv:  H_in  = (H_out - 1) * s - lo - hi + k' + output_padding,
             0 <= output_padding < max(s, d)      (PyTorch's rule)

For ``s > 1`` several ``H_in`` give the same ``H_out``; ``input_shape`` (or PyTorch's ``output_padding``)
picks one. PyTorch also accepts ``s <= output_padding < d``: those last rows are read by no window of the
conv, and the deconv is 0 there. With ``"SAME"`` the default is ``H_in = H_out * s``, as in
``lax.conv_transpose`` and flax ``ConvTranspose``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

Pair = tuple[int, int]
IntOrPair = int | Sequence[int]  # an int, or one int per spatial axis (a pair in 2-D)
# "SAME" | "VALID" | p | (p1, ..., pn) | ((lo1, hi1), ..., (lon, hin))
Padding = str | int | Sequence[int] | Sequence[Sequence[int]]
ExplicitPadding = tuple[tuple[int, int], ...]

# Channels last, kernels [*kernel_size, in, out], by number of spatial axes (lax's dimension numbers).
DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
SPATIAL_NAMES = {1: "W", 2: "H, W", 3: "D, H, W"}


def is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def as_tuple(value: IntOrPair, n: int, name: str, *, minimum: int = 1) -> tuple[int, ...]:
  """``3 -> (3,) * n``; a sequence of ``n`` ints -> that tuple; anything else is a ValueError naming ``name``."""
  if is_int(value):
    out = (value,) * n
  elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == n and all(is_int(v) for v in value):
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


def spatial_axes(kernel: jax.Array) -> int:
  n = kernel.ndim - 2
  if n not in DIMENSION_NUMBERS:
    raise ValueError(f"kernel must be [*kernel_size, Cin // groups, Cout] with 1 to 3 spatial axes, got {kernel.shape}")
  return n


def is_same(padding: Padding) -> bool:
  return isinstance(padding, str) and padding.upper() == "SAME"


def effective_kernel(kernel_size: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
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
      for size, k, s in zip(input_size, effective_kernel(kernel_size, dilation), strides):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
  elif is_int(padding) or (isinstance(padding, Sequence) and len(padding) == n and all(map(is_int, padding))):
    return tuple((p, p) for p in as_tuple(padding, n, "padding", minimum=0))  # type: ignore[arg-type]
  elif (
    isinstance(padding, Sequence)
    and len(padding) == n
    and all(isinstance(p, Sequence) and len(p) == 2 and all(map(is_int, p)) for p in padding)
  ):
    return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore[misc]
  raise ValueError(f"padding must be 'SAME', 'VALID', an int, {n} ints or {n} (lo, hi) pairs, got {padding!r}")


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
    zip(input_size, effective_kernel(kernel_size, dilation), strides, pads)
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
  if is_same(padding):
    return tuple(((o - 1) * s + 1, o * s) for o, s in zip(output_size, strides))
  # Numeric padding does not depend on the input size.
  pads = explicit_padding(padding, (1,) * n, kernel_size, strides, dilation)
  out = []
  for o, k, s, (lo, hi) in zip(output_size, effective_kernel(kernel_size, dilation), strides, pads):
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
  if is_same(padding) and any(output_padding):
    raise ValueError("output_padding only applies to numeric padding; with padding='SAME' pass input_shape")
  if is_same(padding):
    ranges = deconv_output_range(output_size, kernel_size, strides=strides, padding=padding, dilation=dilation)
    return tuple(hi for _, hi in ranges)
  # The PyTorch formula itself, not the smallest size of deconv_output_range plus output_padding: that range's
  # lower end is clamped to 1, which would shift every size when lo + hi is large.
  pads = explicit_padding(padding, (1,) * n, kernel_size, strides, dilation)
  sizes = []
  for axis, (o, k, s, (lo, hi), op) in enumerate(
    zip(output_size, effective_kernel(kernel_size, dilation), strides, pads, output_padding)
  ):
    size = (o - 1) * s - lo - hi + k + op
    if size < 1:
      raise ValueError(
        f"padding {padding!r} is too large for kernel {tuple(kernel_size)}: (H_out - 1) * s - lo - hi + k' + "
        f"output_padding = {size} < 1 on spatial axis {axis}, so no input size gives output size {o}"
      )
    sizes.append(size)
  return tuple(sizes)
