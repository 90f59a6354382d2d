"""Max pooling with one switch per window (as PyTorch), its switches, and unpooling through them."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from deconv_jax.ops.shapes import IntOrPair, Pair, as_pair


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
  ``python -m deconv_jax.experiments.speed --only=max_pool_grad``). Trailing rows/columns that fill
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
