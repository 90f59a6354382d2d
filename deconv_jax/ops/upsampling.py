"""Up-sampling without a transposed convolution: the sub-pixel shuffle and resizing."""

from __future__ import annotations

import jax

from deconv_jax.ops.shapes import IntOrPair, as_pair, is_int


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
  if not is_int(r) or r < 1:
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
