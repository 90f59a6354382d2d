"""Tests for deconv_jax.ops: deconv is the adjoint of conv and agrees with lax, flax and PyTorch, in 1-D, 2-D and 3-D.

Most tests are property-based over the number of spatial axes (1-3), shapes, strides, every padding form, dilations
and groups, on tiny shapes. Every new shape costs XLA compiles, so each example runs its JAX side as *one* jitted
function (``jit_call``): run eagerly, each primitive (zeros, the VJP's forward conv, the transposed conv, reductions,
...) compiles on its own for each shape, several times the cost. The dot-product test and the fixed-case tests stay
eager, so the eager path of ``deconv`` is exercised too.
"""

import functools
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from jax import lax

from deconv_jax import ops

SETTINGS = settings(
  max_examples=25,
  deadline=None,
  database=None,
  suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
TOL = {"rtol": 1e-4, "atol": 1e-4}
SEEDS = st.integers(0, 2**16)
NDIMS = (1, 2, 3)
DNS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
DN = DNS[2]


# ----------------------------------------------------------------------------
# Strategies and helpers.
# ----------------------------------------------------------------------------


def xla_swap_crash(out_hw, in_hw, kernel_hw, strides, dilation, pads, groups):
  """Whether XLA's CPU compiler aborts the process on the transposed conv of this forward conv (jaxlib 0.10.2).

  JAX's transpose of conv_general_dilated (what deconv, jax.linear_transpose, lax.conv_transpose, flax ConvTranspose
  and jax.grad of any conv emit) is a conv of ``y`` with the reversed kernel, base (lhs) dilation ``s``, window
  dilation ``d`` and padding ``(k' - 1 - lo, H - 1 + lo - (H_out - 1) * s)``. XLA's conv operand swap
  (``SwapConvolutionOperandsIfBeneficial``) keeps a "group" dimension (window 2, base dilation 2, stride 1, no
  padding) unchanged when it swaps input and kernel, although the new kernel is ``y``, of size ``H_out`` there: for
  ``H_out != 2`` the result is invalid HLO and AlgebraicSimplifier's CHECK aborts ("Window dimensions do not match RHS
  shape"). In forward terms: an axis with kernel 2, stride 2, dilation 1, padding lo = 1 and H = 2 * (H_out - 1), and
  the other axes' kernels larger than their y. Any number of spatial axes: verified to match the crashes exactly on
  600 random 2-D configs, and on 650 PyTorch configs in 1-D, 2-D and 3-D (1-D never crashes); the strategies below
  skip these so that one XLA bug does not kill the whole pytest process.
  """
  if groups > 1:  # the swap only handles ungrouped convs
    return False
  kernel_product = swapped_product = 1
  broken = False
  for o, n, k, s, d, (lo, _) in zip(out_hw, in_hw, kernel_hw, strides, dilation, pads):
    plo, phi = d * (k - 1) - lo, n - 1 + lo - (o - 1) * s
    if (k, s, d, plo, phi) == (2, 2, 1, 0, 0):
      broken |= o != 2
      continue
    if (k, s, d, plo, phi) == (o, 1, 1, 0, 0):
      continue
    kernel_product *= k
    swapped_product *= k if (o, d, plo, phi) == (1, 1, k - 1, k - 1) else o
  return broken and kernel_product > swapped_product


def int_or_tuple(draw, n, lo, hi):
  """An int or a tuple of ``n`` ints: (the argument as passed, the normalised tuple)."""
  values = tuple(draw(st.integers(lo, hi)) for _ in range(n))
  if len(set(values)) == 1 and draw(st.booleans()):
    return values[0], values
  return values, values


def int_or_pair(draw, lo, hi):
  """An int or a pair of ints: (the argument as passed, the normalised pair)."""
  return int_or_tuple(draw, 2, lo, hi)


def draw_padding(draw, forms=("SAME", "VALID", "int", "pair", "explicit"), n=2):
  """A padding argument for ``n`` spatial axes; "pair" is one int per axis (a pair in 2-D)."""
  form = draw(st.sampled_from(forms))
  if form in ("SAME", "VALID"):
    return draw(st.sampled_from([form, form.lower()]))
  if form == "int":
    return draw(st.integers(0, 2))
  if form == "pair":
    return tuple(draw(st.integers(0, 2)) for _ in range(n))
  return tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(n))


@st.composite
def conv_configs(
  draw, paddings=("SAME", "VALID", "int", "pair", "explicit"), max_hw=9, max_batch=2, groups=(1, 2), ndims=NDIMS
):
  """A forward conv whose kernel fits its input: shapes, keyword arguments, and normalised strides / dilation.

  ``n`` spatial axes, drawn from ``ndims``; 3-D sizes stop at 5.
  """
  n = draw(st.sampled_from(ndims))
  max_size = min(max_hw, 5) if n == 3 else max_hw
  g = draw(st.sampled_from(groups))
  c_in = g * draw(st.integers(1, 4 // g))
  c_out = g * draw(st.integers(1, 4 // g))
  sizes = tuple(draw(st.integers(1, max_size)) for _ in range(n))
  x_shape = (draw(st.integers(1, max_batch)), *sizes, c_in)
  kernel_shape = (*(draw(st.integers(1, 3)) for _ in range(n)), c_in // g, c_out)
  strides, s = int_or_tuple(draw, n, 1, 3)
  dilation, d = int_or_tuple(draw, n, 1, 2)
  padding = draw_padding(draw, paddings, n)
  try:
    out = ops.conv_output_shape(sizes, kernel_shape[:n], strides=strides, padding=padding, dilation=dilation)
  except ValueError:
    assume(False)
  pads = ops.explicit_padding(padding, sizes, kernel_shape[:n], s, d)
  assume(not xla_swap_crash(out, sizes, kernel_shape[:n], s, d, pads, g))
  return {
    "n": n,
    "x_shape": x_shape,
    "kernel_shape": kernel_shape,
    "y_shape": (x_shape[0], *out, c_out),
    "kw": {"strides": strides, "padding": padding, "dilation": dilation, "groups": g},
    "s": s,
    "d": d,
  }


def randn(seed, shape):
  # NumPy, not jax.random: that would compile a sampler for every new shape.
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def distinct(seed, shape):
  """Distinct values (a permutation), so max pooling has no ties."""
  return jnp.asarray(np.random.default_rng(seed).permutation(int(np.prod(shape))).reshape(shape).astype(np.float32))


def arrays(cfg, seed):
  return randn(seed, cfg["x_shape"]), randn(seed + 1, cfg["kernel_shape"]), randn(seed + 2, cfg["y_shape"])


def jit_call(fn, *args):
  """``fn(*args)`` as one XLA computation (one compile for this example's shapes); returns NumPy arrays."""
  return jax.tree.map(np.asarray, jax.jit(fn)(*args))


def effective(cfg):
  return tuple(d * (k - 1) + 1 for k, d in zip(cfg["kernel_shape"][: cfg["n"]], cfg["d"]))


def torch_sizes(out_hw, k_eff, strides, pads, output_padding=None):
  """PyTorch's transposed-conv size per axis, ``(H_out - 1) * s - lo - hi + k' + output_padding``; may be < 1."""
  output_padding = output_padding or (0,) * len(out_hw)
  return tuple(
    (o - 1) * s - lo - hi + k + op for o, k, s, (lo, hi), op in zip(out_hw, k_eff, strides, pads, output_padding)
  )


def numeric_pads(cfg):
  n = cfg["n"]
  return ops.explicit_padding(cfg["kw"]["padding"], (1,) * n, cfg["kernel_shape"][:n], cfg["s"], cfg["d"])


def lax_padding_for(cfg):
  """Padding for lax.conv_transpose / flax ConvTranspose giving the same map as our deconv, and its output size.

  'SAME' / 'VALID' mean the forward conv's padding in lax too, and lax picks the size ``o * s``, resp.
  ``(o - 1) * s + max(k', s)`` (see ``_conv_transpose_padding``). lax's *explicit* padding is that of the transposed
  conv (``k' - 1 - lo`` on the stride-dilated ``y``), so we convert the forward conv's ``(lo, hi)`` for the input
  size the config was drawn with: ``(k' - 1 - lo, k' - 1 - hi + r)``, where ``r = (H + lo + hi - k') mod s`` are the
  input rows the forward conv never reads; that is ``(k' - 1 - lo, H - 1 + lo - (o - 1) * s)``.
  """
  padding = cfg["kw"]["padding"]
  out_size = cfg["y_shape"][1:-1]
  if isinstance(padding, str):
    padding = padding.upper()
    sizes = [
      o * s if padding == "SAME" else (o - 1) * s + max(k, s) for o, k, s in zip(out_size, effective(cfg), cfg["s"])
    ]
    return padding, tuple(sizes)
  in_size = cfg["x_shape"][1:-1]
  pads = []
  for n, o, k, s, (lo, _) in zip(in_size, out_size, effective(cfg), cfg["s"], numeric_pads(cfg)):
    pads.append((k - 1 - lo, n - 1 + lo - (o - 1) * s))
  return tuple(pads), in_size


def lax_deconv(y, kernel, cfg, padding, **kw):
  return lax.conv_transpose(
    y, kernel, cfg["s"], padding, rhs_dilation=cfg["d"], dimension_numbers=DNS[cfg["n"]], transpose_kernel=True, **kw
  )


def naive_torch_conv_transpose(y, kernel, strides, padding, dilation, groups, output_padding):
  """PyTorch's definition in float64 NumPy, channels-last and our forward kernel, any number of spatial axes: each
  input pixel ``i`` adds itself times the kernel into a zero output at ``i * s + a * d - p`` (per axis); what lands
  inside the documented size is kept."""
  y, kernel = np.asarray(y, np.float64), np.asarray(kernel, np.float64)
  batch, *out_size, c_out = y.shape
  *kernel_size, cpg, _ = kernel.shape
  size = tuple(
    (o - 1) * s - 2 * p + d * (k - 1) + 1 + op
    for o, s, p, d, k, op in zip(out_size, strides, padding, dilation, kernel_size, output_padding)
  )
  out = np.zeros((batch, *size, cpg * groups))
  opg = c_out // groups
  for i in np.ndindex(*out_size):
    for a in np.ndindex(*kernel_size):
      r = tuple(i_ * s + a_ * d - p for i_, a_, s, d, p in zip(i, a, strides, dilation, padding))
      if not all(0 <= r_ < n for r_, n in zip(r, size)):
        continue
      for g in range(groups):
        cols = slice(g * opg, (g + 1) * opg)
        out[(slice(None), *r, slice(g * cpg, (g + 1) * cpg))] += (
          y[(slice(None), *i, cols)] @ kernel[(*a, slice(None), cols)].T
        )
  return out


# ----------------------------------------------------------------------------
# 1-2. The adjoint identity; jax.linear_transpose.
# ----------------------------------------------------------------------------


@pytest.mark.slow
@settings(SETTINGS, max_examples=40)
@given(conv_configs(), SEEDS)
def test_dot_product_identity(cfg, seed):
  x, k, y = arrays(cfg, seed)
  # Eager on purpose: this is the path users take outside jit. In 2-D through the 2-D names.
  conv, deconv = (ops.conv2d, ops.deconv2d) if cfg["n"] == 2 else (ops.conv, ops.deconv)
  fx = np.asarray(conv(x, k, **cfg["kw"]), np.float64)
  assert fx.shape == cfg["y_shape"]
  aty = np.asarray(deconv(y, k, **cfg["kw"], input_shape=x.shape), np.float64)
  assert aty.shape == x.shape
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  lhs, rhs = np.vdot(fx, y), np.vdot(x, aty)
  scale = np.linalg.norm(fx) * np.linalg.norm(y) + np.linalg.norm(x) * np.linalg.norm(aty) + 1e-6
  assert abs(lhs - rhs) <= 1e-4 * scale, (lhs, rhs)


@SETTINGS
@given(conv_configs(), SEEDS)
def test_equals_linear_transpose(cfg, seed):
  x, k, y = arrays(cfg, seed)

  def both(y, k):
    forward = functools.partial(ops.conv, kernel=k, **cfg["kw"])
    (expected,) = jax.linear_transpose(forward, jax.ShapeDtypeStruct(x.shape, x.dtype))(y)
    return ops.deconv(y, k, **cfg["kw"], input_shape=x.shape[1:-1]), expected

  ours, expected = jit_call(both, y, k)
  assert ours.shape == x.shape
  np.testing.assert_allclose(ours, expected, **TOL)


def test_delta_gives_unflipped_kernel():
  # PyTorch's definition: each input pixel scatters a copy of the kernel, not flipped.
  k = jnp.arange(1.0, 7.0).reshape(2, 3, 1, 1)
  out = ops.deconv2d(jnp.ones((1, 1, 1, 1)), k, padding="VALID")
  np.testing.assert_array_equal(out[0, :, :, 0], k[:, :, 0, 0])
  # Stride == kernel size: every pixel becomes a block.
  y = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  out = ops.deconv2d(y, jnp.ones((2, 2, 1, 1)), strides=2, padding="VALID")
  np.testing.assert_array_equal(out[0, :, :, 0], np.kron(y[0, :, :, 0], np.ones((2, 2))))
  # The same in 1-D and 3-D.
  k1 = jnp.array([1.0, 2.0, 3.0]).reshape(3, 1, 1)
  np.testing.assert_array_equal(ops.deconv(jnp.ones((1, 1, 1)), k1, padding="VALID")[0, :, 0], [1, 2, 3])
  k3 = jnp.arange(1.0, 9.0).reshape(2, 2, 2, 1, 1)
  np.testing.assert_array_equal(ops.deconv(jnp.ones((1, 1, 1, 1, 1)), k3, padding="VALID")[0, ..., 0], k3[..., 0, 0])


# ----------------------------------------------------------------------------
# 3-4. lax.conv_transpose and flax ConvTranspose (no groups in either).
# ----------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(conv_configs(groups=(1,)), SEEDS)
def test_equals_lax_conv_transpose(cfg, seed):
  _, k, y = arrays(cfg, seed)
  lax_padding, in_size = lax_padding_for(cfg)
  is_same = isinstance(lax_padding, str) and lax_padding == "SAME"

  def both(y, k):
    ours = ops.deconv(y, k, **cfg["kw"], input_shape=in_size)
    # H_out * s is also our default size for SAME.
    default = ops.deconv(y, k, **cfg["kw"]) if is_same else ours
    return ours, default, lax_deconv(y, k, cfg, lax_padding)

  ours, default, expected = jit_call(both, y, k)
  assert expected.shape[1:-1] == in_size
  np.testing.assert_allclose(ours, expected, **TOL)
  np.testing.assert_allclose(default, expected, **TOL)


@pytest.mark.parametrize(
  "y_hw, kernel_hw, strides, dilation",
  [((4, 3), (2, 4), 1, 1), ((3, 3), (3, 3), 2, 1), ((2, 3), (2, 2), (2, 1), 2), ((3, 2), (4, 3), (3, 2), (1, 2))],
)
def test_same_padding_odd_total_matches_lax(y_hw, kernel_hw, strides, dilation):
  # Odd total SAME padding, where the side that gets the extra row matters (XLA: the smaller half goes first).
  s, d = ops.as_pair(strides, "strides"), ops.as_pair(dilation, "dilation")
  in_hw = (y_hw[0] * s[0], y_hw[1] * s[1])
  pads = ops.explicit_padding("SAME", in_hw, kernel_hw, s, d)
  assert all(hi - lo in (0, 1) for lo, hi in pads) and any(hi - lo == 1 for lo, hi in pads)
  y, k = randn(0, (1, *y_hw, 2)), randn(1, (*kernel_hw, 3, 2))
  expected = lax.conv_transpose(y, k, s, "SAME", rhs_dilation=d, dimension_numbers=DN, transpose_kernel=True)
  np.testing.assert_allclose(ops.deconv2d(y, k, strides=strides, dilation=dilation), expected, **TOL)


@pytest.mark.parametrize(
  "y_dtype, k_dtype, expected_dtype",
  [
    (jnp.bfloat16, jnp.bfloat16, jnp.bfloat16),  # a bfloat16 generator stays in bfloat16
    (jnp.bfloat16, jnp.float32, jnp.float32),  # mixed: the wider of the two, as lax.conv_transpose promotes
    (jnp.float16, jnp.float16, jnp.float16),
  ],
)
def test_dtype_is_the_promotion_of_its_inputs(y_dtype, k_dtype, expected_dtype):
  """Half-precision in, half-precision out: deconv computes in ``result_type(y, kernel)``, as `lax.conv_transpose`
  and flax's ConvTranspose do, and gives their values in it."""
  y, k = randn(0, (2, 4, 5, 3)).astype(y_dtype), randn(1, (3, 3, 2, 3)).astype(k_dtype)
  ours = ops.deconv2d(y, k, strides=2)
  expected = lax.conv_transpose(
    y.astype(expected_dtype), k.astype(expected_dtype), (2, 2), "SAME", dimension_numbers=DN, transpose_kernel=True
  )
  assert ours.dtype == expected.dtype == expected_dtype
  np.testing.assert_allclose(ours.astype(jnp.float32), expected.astype(jnp.float32), rtol=2e-2, atol=5e-2)


@SETTINGS
@given(conv_configs(paddings=("int", "pair", "explicit"), groups=(1,)), SEEDS)
def test_equals_lax_conv_transpose_consistent_padding(cfg, seed):
  if "use_consistent_padding" not in inspect.signature(lax.conv_transpose).parameters:
    pytest.skip(f"jax {jax.__version__}'s lax.conv_transpose has no use_consistent_padding (added in jax 0.9)")
  # With use_consistent_padding=True lax reads explicit pads as the forward conv's (PyTorch's reading) and produces
  # the smallest size, (o - 1) * s + k' - lo - hi: our default with output_padding=0.
  _, k, y = arrays(cfg, seed)
  fwd = numeric_pads(cfg)
  in_size = torch_sizes(cfg["y_shape"][1:-1], effective(cfg), cfg["s"], fwd)
  assume(min(in_size) >= 1)
  n = cfg["n"]
  assume(not xla_swap_crash(cfg["y_shape"][1:-1], in_size, cfg["kernel_shape"][:n], cfg["s"], cfg["d"], fwd, 1))
  ours, expected = jit_call(
    lambda y, k: (ops.deconv(y, k, **cfg["kw"]), lax_deconv(y, k, cfg, fwd, use_consistent_padding=True)), y, k
  )
  assert ours.shape[1:-1] == expected.shape[1:-1] == in_size
  np.testing.assert_allclose(ours, expected, **TOL)


@settings(SETTINGS, max_examples=20)
@given(conv_configs(groups=(1,)), SEEDS)
def test_equals_flax_conv_transpose(cfg, seed):
  _, k, y = arrays(cfg, seed)
  flax_padding, in_size = lax_padding_for(cfg)
  layer = nn.ConvTranspose(
    features=cfg["x_shape"][-1],
    kernel_size=cfg["kernel_shape"][: cfg["n"]],
    strides=cfg["s"],
    padding=flax_padding,
    kernel_dilation=cfg["d"],
    transpose_kernel=True,
    use_bias=False,
  )
  # With transpose_kernel=True flax's kernel is [*k, features, in_features]: the forward conv's kernel.
  params = jax.eval_shape(layer.init, jax.random.key(0), y)
  assert params["params"]["kernel"].shape == k.shape
  ours, expected = jit_call(
    lambda y, k: (ops.deconv(y, k, **cfg["kw"], input_shape=in_size), layer.apply({"params": {"kernel": k}}, y)), y, k
  )
  assert expected.shape[1:-1] == in_size
  np.testing.assert_allclose(ours, expected, **TOL)


# ----------------------------------------------------------------------------
# 5. PyTorch's conv_transpose{1,2,3}d: the whole space it accepts, and what it refuses.
# ----------------------------------------------------------------------------


@st.composite
def torch_configs(draw, max_hw=5, accepted_only=False, ndims=NDIMS):
  """A call of ``torch.nn.functional.conv_transpose{n}d`` over the space PyTorch accepts: strides 1-3, dilation 1-3,
  padding 0-3, ``0 <= output_padding < max(stride, dilation)``, groups 1-3, kernel 1-4 (3-D: 1-3), sizes 1-5 (3-D:
  1-3). Unless ``accepted_only``, one example in six has an ``output_padding`` PyTorch refuses, and padding may
  leave no output (size < 1), which PyTorch refuses too."""
  n = draw(st.sampled_from(ndims))
  max_size, max_kernel = (3, 3) if n == 3 else (max_hw, 4)
  g = draw(st.sampled_from((1, 2, 3)))
  c_in, c_out = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
  y_shape = (draw(st.integers(1, 2)), *(draw(st.integers(1, max_size)) for _ in range(n)), c_out)
  kernel_shape = (*(draw(st.integers(1, max_kernel)) for _ in range(n)), c_in // g, c_out)
  strides, s = int_or_tuple(draw, n, 1, 3)
  dilation, d = int_or_tuple(draw, n, 1, 3)
  padding, p = int_or_tuple(draw, n, 0, 3)
  bounds = tuple(max(s_, d_) for s_, d_ in zip(s, d))
  op = [draw(st.integers(0, b - 1)) for b in bounds]
  if not accepted_only and draw(st.integers(0, 5)) == 0:
    axis = draw(st.integers(0, n - 1))
    op[axis] = bounds[axis] + draw(st.integers(0, 1))
  op = tuple(op)
  output_padding = op[0] if len(set(op)) == 1 and draw(st.booleans()) else op
  # PyTorch's documented output size.
  size = tuple(
    (o - 1) * s_ - 2 * p_ + d_ * (k - 1) + 1 + op_
    for o, s_, p_, d_, k, op_ in zip(y_shape[1:-1], s, p, d, kernel_shape[:n], op)
  )
  if accepted_only:
    assume(min(size) >= 1)
  assume(not xla_swap_crash(y_shape[1:-1], size, kernel_shape[:n], s, d, [(p_, p_) for p_ in p], g))
  return {
    "n": n,
    "y_shape": y_shape,
    "kernel_shape": kernel_shape,
    "kw": {"strides": strides, "padding": padding, "dilation": dilation, "groups": g, "output_padding": output_padding},
    "torch_kw": {"stride": s, "padding": p, "dilation": d, "groups": g, "output_padding": op},
    "size": size,
    "c_in": c_in,
    "refused": any(o >= b for o, b in zip(op, bounds)) or min(size) < 1,
    "refused_by": "output_padding" if any(o >= b for o, b in zip(op, bounds)) else "padding",
  }


def torch_conv_transpose(torch, cfg, k, y, ct=None):
  """PyTorch's ``conv_transpose{n}d`` on our arrays (channels-last, the forward kernel); with a cotangent ``ct`` also
  its gradients in our layouts: ``(output, kernel gradient, y gradient)``."""
  n = cfg["n"]
  # torch's transposed-conv weight [C_in of y, C_out // groups, *k] is the forward conv's [O, I, *k] weight.
  weight = torch.from_numpy(np.asarray(k).transpose(n + 1, n, *range(n)).copy()).requires_grad_(ct is not None)
  y_t = torch.from_numpy(np.moveaxis(np.asarray(y), -1, 1).copy()).requires_grad_(ct is not None)
  out = getattr(torch.nn.functional, f"conv_transpose{n}d")(y_t, weight, **cfg["torch_kw"])
  if ct is None:
    return np.moveaxis(out.numpy(), 1, -1)
  (out * torch.from_numpy(np.moveaxis(np.asarray(ct), -1, 1).copy())).sum().backward()
  kernel_grad = weight.grad.numpy().transpose(*range(2, n + 2), 1, 0)
  return np.moveaxis(out.detach().numpy(), 1, -1), kernel_grad, np.moveaxis(y_t.grad.numpy(), 1, -1)


@pytest.mark.slow
@settings(SETTINGS, max_examples=60)
@given(torch_configs(), SEEDS)
def test_equals_torch_conv_transpose(cfg, seed):
  torch = pytest.importorskip("torch")
  k, y = randn(seed, cfg["kernel_shape"]), randn(seed + 1, cfg["y_shape"])
  try:
    expected = torch_conv_transpose(torch, cfg, k, y)
  except RuntimeError:
    # PyTorch refuses exactly where we do, and we name the argument.
    assert cfg["refused"]
    with pytest.raises(ValueError, match=cfg["refused_by"]):
      ops.deconv(y, k, **cfg["kw"])
    return
  if min(expected.shape[1:-1]) == 0:
    # Size 0: PyTorch's grouped path returns an empty array where its ungrouped path refuses ("Output size is too
    # small", its shape check); we refuse, as that check does.
    assert cfg["refused"] and min(cfg["size"]) == 0
    with pytest.raises(ValueError, match="padding"):
      ops.deconv(y, k, **cfg["kw"])
    return
  assert not cfg["refused"]
  ours = jit_call(functools.partial(ops.deconv, **cfg["kw"]), y, k)
  assert ours.shape == expected.shape == (cfg["y_shape"][0], *cfg["size"], cfg["c_in"])
  np.testing.assert_allclose(ours, expected, **TOL)


@pytest.mark.slow
@settings(SETTINGS, max_examples=30)
@given(torch_configs(accepted_only=True), SEEDS)
def test_gradients_equal_torch(cfg, seed):
  # Our deconv's own derivatives (the conv for y, the conv's kernel gradient for the kernel) against PyTorch autograd.
  torch = pytest.importorskip("torch")
  k, y = randn(seed, cfg["kernel_shape"]), randn(seed + 1, cfg["y_shape"])
  ct = randn(seed + 2, (cfg["y_shape"][0], *cfg["size"], cfg["c_in"]))
  _, kernel_grad, y_grad = torch_conv_transpose(torch, cfg, k, y, ct)
  deconv = functools.partial(ops.deconv, **cfg["kw"])
  grads = jit_call(jax.grad(lambda k, y: jnp.vdot(deconv(y, k), ct), (0, 1)), k, y)
  np.testing.assert_allclose(grads[0], kernel_grad, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(grads[1], y_grad, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
@settings(SETTINGS, max_examples=20)
@given(torch_configs(accepted_only=True), SEEDS)
def test_from_torch_conv_transpose(cfg, seed):
  # PyTorch's weight and arguments, as a ConvTranspose module stores them, through the documented conversion.
  torch = pytest.importorskip("torch")
  k, y = randn(seed, cfg["kernel_shape"]), randn(seed + 1, cfg["y_shape"])
  n = cfg["n"]
  weight = torch.from_numpy(np.asarray(k).transpose(n + 1, n, *range(n)).copy()).requires_grad_()
  kernel, kw = ops.from_torch_conv_transpose(weight, **cfg["torch_kw"])
  np.testing.assert_array_equal(kernel, k)
  assert kw == {
    "strides": cfg["torch_kw"]["stride"],
    **{key: v for key, v in cfg["torch_kw"].items() if key != "stride"},
  }
  ours = jit_call(lambda y, kernel: ops.deconv(y, kernel, **kw), y, kernel)
  np.testing.assert_allclose(ours, torch_conv_transpose(torch, cfg, k, y), **TOL)


@pytest.mark.slow
@settings(SETTINGS, max_examples=30)
@given(torch_configs(max_hw=4, accepted_only=True), SEEDS)
def test_equals_naive_pytorch_definition(cfg, seed):
  k, y = randn(seed, cfg["kernel_shape"]), randn(seed + 1, cfg["y_shape"])
  ours = jit_call(functools.partial(ops.deconv, **cfg["kw"]), y, k)
  t = cfg["torch_kw"]
  args = (t["stride"], t["padding"], t["dilation"], t["groups"], t["output_padding"])
  expected = naive_torch_conv_transpose(y, k, *args)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, **TOL)


@pytest.mark.parametrize(
  "y_shape, kernel_shape, s, p, d, g, op, out_hw",
  [
    ((2, 3, 4, 2), (3, 3, 3, 2), (2, 2), (1, 1), (1, 1), 1, (1, 1), (6, 8)),
    ((1, 3, 2, 4), (3, 2, 1, 4), (3, 2), (2, 0), (1, 2), 2, (2, 0), (7, 5)),
    ((1, 2, 3, 4), (2, 3, 2, 4), (1, 1), (0, 0), (2, 2), 2, (0, 0), (4, 7)),
    # 2 * p > k': the sizes start at 1, reached only through output_padding (the fixed ops.py bug).
    ((1, 1, 2, 1), (1, 1, 1, 1), (3, 3), (1, 1), (1, 1), 1, (2, 2), (1, 4)),
    # s <= output_padding < d: rows no window reaches, 0 in the output (PyTorch accepts these).
    ((1, 3, 2, 2), (2, 2, 1, 2), (1, 2), (0, 1), (3, 3), 1, (2, 2), (8, 6)),
    ((1, 2, 2, 1), (2, 1, 1, 1), (1, 1), (1, 0), (3, 2), 1, (2, 1), (5, 3)),
  ],
)
def test_naive_pytorch_definition_fixed(y_shape, kernel_shape, s, p, d, g, op, out_hw):
  k, y = randn(0, kernel_shape), randn(1, y_shape)
  expected = naive_torch_conv_transpose(y, k, s, p, d, g, op)
  assert expected.shape[1:3] == out_hw
  ours = ops.deconv2d(y, k, strides=s, padding=p, dilation=d, groups=g, output_padding=op)
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, **TOL)


# ----------------------------------------------------------------------------
# 6. The dense matrix.
# ----------------------------------------------------------------------------


@pytest.mark.slow
@SETTINGS
@given(conv_configs(max_hw=5, max_batch=1), SEEDS)
def test_conv_matrix(cfg, seed):
  x, k, y = arrays(cfg, seed)
  m, fx, aty = jit_call(
    lambda x, k, y: (
      ops.conv_matrix(k, x.shape, **cfg["kw"]),
      ops.conv(x, k, **cfg["kw"]),
      ops.deconv(y, k, **cfg["kw"], input_shape=x.shape),
    ),
    x,
    k,
    y,
  )
  assert m.shape == (int(np.prod(cfg["y_shape"])), x.size)
  x, y = np.asarray(x), np.asarray(y)
  np.testing.assert_allclose(m @ x.ravel(), fx.ravel(), **TOL)
  np.testing.assert_allclose(m.T @ y.ravel(), aty.ravel(), **TOL)


# ----------------------------------------------------------------------------
# 7. The VJP compiles to a single convolution: the forward conv is dead code.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kw, y_shape, kernel_shape",
  [
    ({"strides": 2, "padding": "SAME"}, (1, 4, 4, 3), (3, 3, 2, 3)),
    ({"strides": 1, "padding": "VALID", "dilation": 2}, (2, 3, 5, 2), (2, 3, 4, 2)),
    ({"strides": (2, 3), "padding": ((1, 0), (2, 1)), "groups": 2, "input_shape": (6, 7)}, (1, 3, 3, 4), (3, 2, 1, 4)),
    ({"strides": 2, "padding": 1, "output_padding": 1}, (1, 3, 3, 2), (3, 3, 2, 2)),
    ({"strides": 1, "padding": 0, "dilation": 3, "output_padding": 2}, (1, 3, 3, 2), (2, 2, 2, 2)),
    ({"strides": 2, "padding": 1, "output_padding": 1}, (1, 5, 2), (3, 2, 2)),
    ({"strides": 2, "padding": "SAME", "groups": 2}, (1, 2, 3, 2, 4), (3, 2, 2, 1, 4)),
  ],
)
def test_hlo_single_convolution(kw, y_shape, kernel_shape):
  lowered = jax.jit(functools.partial(ops.deconv, **kw)).lower(jnp.ones(y_shape), jnp.ones(kernel_shape))
  assert lowered.as_text().count("stablehlo.convolution") == 1
  assert lowered.compile().as_text().count("convolution(") == 1


_XLA_CRASH_SCRIPT = """
import json
import numpy as np
from deconv_jax import ops
y = np.random.default_rng(0).standard_normal((1, 2, 3, 1), dtype=np.float32)
k = np.random.default_rng(1).standard_normal((3, 2, 1, 1), dtype=np.float32)
x = ops.deconv2d(y, k, strides=(1, 2), padding=(2, 1), dilation=(2, 1), input_shape=(2, 4))
print(json.dumps(np.asarray(x).ravel().tolist()))
"""


def test_known_xla_crash_case():
  """The XLA abort that ``xla_swap_crash`` steers around, run in a subprocess (it kills the interpreter).

  Passes while XLA aborts with exactly that CHECK, and once XLA is fixed, if the result is then right (then the
  filter in the strategies can go). Fails on any other outcome.
  """
  assert xla_swap_crash((2, 3), (2, 4), (3, 2), (1, 2), (2, 1), ((2, 2), (1, 1)), 1)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(ops.__file__))))  # deconv_jax/ops/
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(_XLA_CRASH_SCRIPT)], capture_output=True, text=True, env=env, timeout=300
  )
  if proc.returncode == 0:
    y = np.random.default_rng(0).standard_normal((1, 2, 3, 1), dtype=np.float32)
    k = np.random.default_rng(1).standard_normal((3, 2, 1, 1), dtype=np.float32)
    expected = naive_torch_conv_transpose(y, k, (1, 2), (2, 1), (2, 1), 1, (0, 0))
    assert expected.shape == (1, 2, 4, 1)
    np.testing.assert_allclose(json.loads(proc.stdout.strip().splitlines()[-1]), expected.ravel(), **TOL)
  else:
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-2000:]
    assert "Window dimensions do not match RHS shape" in proc.stderr, proc.stderr[-2000:]


# ----------------------------------------------------------------------------
# 8. Shape helpers (shapes only: eval_shape compiles nothing).
# ----------------------------------------------------------------------------


@settings(SETTINGS, max_examples=40)
@given(conv_configs(max_hw=12))
def test_conv_output_shape_matches_conv2d(cfg):
  out = jax.eval_shape(
    functools.partial(ops.conv, **cfg["kw"]),
    jax.ShapeDtypeStruct(cfg["x_shape"], jnp.float32),
    jax.ShapeDtypeStruct(cfg["kernel_shape"], jnp.float32),
  )
  assert out.shape == cfg["y_shape"]


def conv_size_or_none(n_hw, kernel_hw, kw):
  try:
    return ops.conv_output_shape(n_hw, kernel_hw, **kw)
  except ValueError:  # the kernel does not fit
    return None


@settings(SETTINGS, max_examples=40)
@given(st.tuples(st.integers(1, 6), st.integers(1, 6)), st.tuples(st.integers(1, 4), st.integers(1, 4)), st.data())
def test_deconv_output_range_is_exactly_the_preimage(out_hw, kernel_hw, data):
  strides, s = int_or_pair(data.draw, 1, 3)
  dilation, _ = int_or_pair(data.draw, 1, 2)
  kw = {"strides": strides, "padding": draw_padding(data.draw), "dilation": dilation}
  ranges = ops.deconv_output_range(out_hw, kernel_hw, **kw)
  assume(all(lo <= hi for lo, hi in ranges))
  limit = max(hi for _, hi in ranges) + 2 * max(s) + 12
  for axis in range(2):
    other = ranges[1 - axis][0]
    found = []
    for n in range(1, limit):
      got = conv_size_or_none((n, other) if axis == 0 else (other, n), kernel_hw, kw)
      if got is not None and got[axis] == out_hw[axis]:
        found.append(n)
    lo, hi = ranges[axis]
    # Every size in the range maps back, and nothing else does (in particular not lo - 1 and hi + 1).
    assert found == list(range(lo, hi + 1)), (axis, found, ranges[axis])


@settings(SETTINGS, max_examples=40)
@given(st.integers(1, 3), st.data())
def test_deconv_output_shape(n, data):
  out_size = tuple(data.draw(st.integers(1, 6)) for _ in range(n))
  kernel_size = tuple(data.draw(st.integers(1, 4)) for _ in range(n))
  strides, s = int_or_tuple(data.draw, n, 1, 3)
  dilation, d = int_or_tuple(data.draw, n, 1, 3)
  padding = draw_padding(data.draw, n=n)
  kw = {"strides": strides, "padding": padding, "dilation": dilation}
  if isinstance(padding, str) and padding.upper() == "SAME":
    assert ops.deconv_output_shape(out_size, kernel_size, **kw) == tuple(o * s_ for o, s_ in zip(out_size, s))
    with pytest.raises(ValueError, match="output_padding"):
      ops.deconv_output_shape(out_size, kernel_size, **kw, output_padding=1)
    return
  # PyTorch's range, 0 <= output_padding < max(s, d); one past it is refused.
  op = tuple(data.draw(st.integers(0, max(s_, d_) - 1)) for s_, d_ in zip(s, d))
  too_large = tuple(max(s_, d_) if i == 0 else o for i, (o, s_, d_) in enumerate(zip(op, s, d)))
  with pytest.raises(ValueError, match=r"output_padding .* out of range"):
    ops.deconv_output_shape(out_size, kernel_size, **kw, output_padding=too_large)
  pads = ops.explicit_padding(padding, (1,) * n, kernel_size, s, d)
  expected = torch_sizes(out_size, [d_ * (k - 1) + 1 for k, d_ in zip(kernel_size, d)], s, pads, op)
  if min(expected) < 1:
    with pytest.raises(ValueError, match="padding"):
      ops.deconv_output_shape(out_size, kernel_size, **kw, output_padding=op)
    return
  got = ops.deconv_output_shape(out_size, kernel_size, **kw, output_padding=op)
  assert got == expected
  # output_padding < s picks a size the conv maps back to out_size; each further s rows add one output.
  assert ops.conv_output_shape(got, kernel_size, **kw) == tuple(o + p // s_ for o, p, s_ in zip(out_size, op, s))
  ranges = ops.deconv_output_range(out_size, kernel_size, **kw)
  assert all(lo <= v <= hi for v, (lo, hi), p, s_ in zip(got, ranges, op, s) if p < s_)


@settings(SETTINGS, max_examples=40)
@given(conv_configs(max_hw=12))
def test_deconv2d_default_shape_maps_back(cfg):
  kw = dict(cfg["kw"])
  y = jax.ShapeDtypeStruct(cfg["y_shape"], jnp.float32)
  kernel = jax.ShapeDtypeStruct(cfg["kernel_shape"], jnp.float32)
  try:
    out = jax.eval_shape(functools.partial(ops.deconv, **kw), y, kernel)
  except ValueError:
    # Only where the PyTorch formula gives no valid size (explicit padding larger than the kernel).
    assert min(torch_sizes(cfg["y_shape"][1:-1], effective(cfg), cfg["s"], numeric_pads(cfg))) < 1
    return
  assert (out.shape[0], out.shape[-1]) == (cfg["x_shape"][0], cfg["x_shape"][-1])
  del kw["groups"]
  n = cfg["n"]
  assert ops.conv_output_shape(out.shape[1:-1], cfg["kernel_shape"][:n], **kw) == cfg["y_shape"][1:-1]


# ----------------------------------------------------------------------------
# 9. Errors name the offending argument.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kw, match",
  [
    ({"strides": 2, "padding": 1, "output_padding": 2}, "output_padding"),
    ({"strides": (2, 3), "padding": 0, "output_padding": (1, 3)}, "output_padding"),
    ({"strides": 1, "dilation": 3, "padding": 0, "output_padding": 3}, r"output_padding \(3, 3\) is out of range"),
    ({"strides": (1, 2), "dilation": (2, 1), "padding": 0, "output_padding": (1, 2)}, r"max\(strides, dilation\)"),
    ({"strides": 2, "padding": "SAME", "output_padding": 1}, "output_padding"),
    ({"strides": 2, "padding": "SAME", "input_shape": (8, 9)}, "input_shape"),
    ({"strides": 2, "padding": "SAME", "input_shape": (6, 8)}, "input_shape"),
    ({"strides": 2, "padding": "VALID", "input_shape": (1, 9, 9, 3)}, "input_shape"),
    ({"strides": 2, "padding": "VALID", "input_shape": (1, 11, 9, 2)}, "input_shape"),
    ({"strides": 2, "padding": "VALID", "input_shape": (9, 9, 2)}, "input_shape"),
    ({"strides": 2, "padding": 1, "input_shape": (8, 8), "output_padding": 1}, "input_shape or output_padding"),
    ({"padding": "FULL"}, "padding"),
    ({"padding": -1}, "padding"),
    ({"padding": ((1, 2),)}, "padding"),
    ({"padding": (1, 2, 3)}, "padding"),
    ({"strides": 1, "padding": 3}, "padding"),  # too large: PyTorch's size formula gives 0
    ({"strides": 0}, "strides"),
    ({"strides": -1}, "strides"),
    ({"strides": (1, 0)}, "strides"),
    ({"strides": (1, 2, 3)}, "strides"),
    ({"dilation": 0}, "dilation"),
    ({"groups": 2}, "groups"),
  ],
)
def test_deconv2d_errors(kw, match):
  y, k = jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 3))
  with pytest.raises(ValueError, match=match):
    ops.deconv2d(y, k, **kw)


def test_deconv2d_kernel_channel_mismatch():
  with pytest.raises(ValueError, match="kernel"):
    ops.deconv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2)))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: ops.deconv(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 2, 3))), r"^y must be \[N, \*spatial, Cout\]"),
    (lambda: ops.conv(jnp.ones((1, 4, 3)), jnp.ones((3, 3, 3, 2))), r"^x must be \[N, \*spatial, Cin\]"),
    (lambda: ops.deconv(jnp.ones((1, 1, 1, 1, 1, 3)), jnp.ones((1, 1, 1, 1, 2, 3))), "^kernel must be"),
    (lambda: ops.deconv2d(jnp.ones((1, 4, 3)), jnp.ones((3, 3, 3))), "^deconv2d takes"),
    (lambda: ops.conv2d(jnp.ones((1, 4, 4, 4, 3)), jnp.ones((3, 3, 3, 3, 2))), "^conv2d takes"),
    (lambda: ops.deconv(jnp.ones((1, 2, 2, 2, 3)), jnp.ones((2, 2, 2, 1, 3)), input_shape=(4, 4)), "^input_shape"),
    (lambda: ops.deconv(jnp.ones((1, 4, 3)), jnp.ones((3, 2, 3)), strides=2, padding=((1, 2),) * 2), "^padding"),
    (lambda: ops.deconv(jnp.ones((1, 4, 3)), jnp.ones((3, 2, 3)), dilation=(1, 2)), "^dilation"),
    (lambda: ops.conv_output_shape((4, 4), (3,)), "^input_size"),
  ],
)
def test_n_dimensional_errors(call, match):
  with pytest.raises(ValueError, match=match) as info:
    call()
  assert "\n" not in str(info.value)


def test_argument_errors_are_one_whole_line_per_dimension():
  """The whole message, not its first word: which argument, its value, and what is allowed, in 1-D, 2-D and 3-D."""
  x = {n: jnp.ones((1, *(4,) * n, 2)) for n in NDIMS}
  k = {n: jnp.ones((*(3,) * n, 2, 2)) for n in NDIMS}
  cases = [
    (lambda: ops.conv(x[2], k[2], strides=0), "strides must be >= 1, got 0"),
    (lambda: ops.conv(x[2], k[2], dilation=(1, 2, 3)), "dilation must be an int or a pair of ints, got (1, 2, 3)"),
    (lambda: ops.conv(x[1], k[1], strides=(1, 1)), "strides must be an int or a sequence of 1 ints, got (1, 1)"),
    (lambda: ops.conv(x[3], k[3], dilation=(1, 1)), "dilation must be an int or a sequence of 3 ints, got (1, 1)"),
    (lambda: ops.conv_kernel_grad(x[2], x[2], (3, 3), strides=0), "strides must be >= 1, got 0"),
    (lambda: ops.conv_kernel_grad(x[2], x[2], (3, 3), dilation=0), "dilation must be >= 1, got 0"),
    (lambda: ops.deconv(x[1], k[1], input_shape=(1, 2)), "input_shape must be (W) or (N, W, C), got (1, 2)"),
    (lambda: ops.deconv(x[2], k[2], input_shape=(4,)), "input_shape must be (H, W) or (N, H, W, C), got (4,)"),
    (
      lambda: ops.deconv(x[3], k[3], input_shape=(4, 4)),
      "input_shape must be (D, H, W) or (N, D, H, W, C), got (4, 4)",
    ),
  ]
  size = functools.partial(ops.deconv_output_shape, (2, 2), (3, 3))
  for name, op in [("conv2d", ops.conv2d), ("deconv2d", ops.deconv2d)]:  # 2-D alone: a 3-D x or kernel either way
    for a, b in [((1, 4, 4, 2), (3, 3, 3, 2, 2)), ((1, 4, 4, 4, 2), (3, 3, 2, 2))]:
      what = "x" if name == "conv2d" else "y"
      message = f"{name} takes {what} [N, H, W, C] and an HWIO kernel, got shapes {a} and {b}"
      cases.append((lambda op=op, a=a, b=b: op(jnp.ones(a), jnp.ones(b)), message))
  cases += [
    (lambda: ops.deconv(x[2], k[2], strides=0), "strides must be >= 1, got 0"),
    (lambda: ops.deconv(x[2], k[2], dilation=(1,)), "dilation must be an int or a pair of ints, got (1,)"),
    (
      lambda: ops.deconv(x[2], jnp.ones((3, 3, 2, 3))),
      "kernel has 3 output channels but y has 2: kernel must be the forward conv's [*k, Cin, Cout] kernel",
    ),
    (
      lambda: size(strides=2, padding=1, output_padding=2),
      "output_padding (2, 2) is out of range: 0 <= output_padding < max(strides, dilation) = (2, 2)",
    ),
    (lambda: size(strides=2, padding=1, output_padding=-1), "output_padding must be >= 0, got -1"),
    (
      lambda: size(strides=2, padding="SAME", output_padding=1),
      "output_padding only applies to numeric padding; with padding='SAME' pass input_shape",
    ),
    (
      lambda: size(padding=3),
      "padding 3 is too large for kernel (3, 3): (H_out - 1) * s - lo - hi + k' + output_padding = -2 < 1 on "
      "spatial axis 0, so no input size gives output size 2",
    ),
  ]
  for call, message in cases:
    with pytest.raises(ValueError) as info:
      call()
    assert str(info.value) == message


def test_input_shape_in_either_form_and_its_errors_whole():
  """``input_shape`` as ``(H, W)`` or ``(N, H, W, C)`` picks the same size, grouped or not; a full shape must match
  the batch and the kernel's input channels (``Cin // groups`` times ``groups``)."""
  y = jax.random.normal(jax.random.key(0), (2, 5, 4, 4))
  for groups, kernel_in in [(1, 6), (2, 3)]:
    k = jax.random.normal(jax.random.key(1), (3, 3, kernel_in, 4))
    kw = {"strides": 2, "padding": "SAME", "groups": groups}
    spatial = ops.deconv(y, k, input_shape=(9, 7), **kw)
    assert spatial.shape == (2, 9, 7, 6)
    np.testing.assert_array_equal(ops.deconv(y, k, input_shape=(2, 9, 7, 6), **kw), spatial)
  cases = [
    ({"input_shape": (3, 9, 7, 6)}, "input_shape (3, 9, 7, 6) does not match batch 2 and kernel input channels 6"),
    ({"input_shape": (2, 9, 7, 5)}, "input_shape (2, 9, 7, 5) does not match batch 2 and kernel input channels 6"),
    ({"input_shape": (2, 9, 7, 6, 1)}, "input_shape must be (H, W) or (N, H, W, C), got (2, 9, 7, 6, 1)"),
    (
      {"input_shape": (2, 11, 7, 6)},
      "input_shape (2, 11, 7, 6): conv maps spatial size (11, 7) to something other than (5, 4); allowed ranges "
      "per axis are ((9, 10), (7, 8))",
    ),
    ({"input_shape": (9, 7), "output_padding": 1}, "give either input_shape or output_padding, not both"),
    ({"input_shape": (9, 7), "output_padding": -1}, "output_padding must be >= 0, got -1"),
    ({"groups": 0}, "groups must be a positive divisor of the 4 output channels, got 0"),
    ({"groups": 2.0}, "groups must be a positive divisor of the 4 output channels, got 2.0"),
    ({"groups": 3}, "groups must be a positive divisor of the 4 output channels, got 3"),
  ]
  k = jnp.ones((3, 3, 6, 4))
  for kwargs, message in cases:
    with pytest.raises(ValueError) as info:
      ops.deconv(y, k, strides=2, padding="SAME", **kwargs)
    assert str(info.value) == message, kwargs


@pytest.mark.parametrize("n", [1, 2])
def test_conv_matrix_is_the_conv_on_flattened_inputs(n):
  """The fast tier's check of `conv_matrix` (the slow property test covers the options): ``W @ x == conv(x)`` and
  ``W.T @ y == deconv(y)``, channels last, with the input shape given with or without its batch axis."""
  size = (5, 4)[:n]
  kernel = jax.random.normal(jax.random.key(0), (*(3,) * n, 2, 3))
  x = jax.random.normal(jax.random.key(1), (1, *size, 2))
  w = ops.conv_matrix(kernel, (*size, 2))
  np.testing.assert_array_equal(ops.conv_matrix(kernel, (1, *size, 2)), w)
  y = ops.conv(x, kernel)
  assert w.shape == (y.size, x.size)
  np.testing.assert_allclose(w @ x.reshape(-1), y.reshape(-1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(w.T @ y.reshape(-1), ops.deconv(y, kernel).reshape(-1), rtol=1e-5, atol=1e-5)


def test_shape_arithmetic_defaults_and_its_errors_whole():
  """The size functions called with no options are stride 1, SAME, no dilation; each names its bad argument."""
  explicit = {"strides": 1, "padding": "SAME", "dilation": 1}
  assert ops.conv_output_shape((5, 6), (3, 3)) == ops.conv_output_shape((5, 6), (3, 3), **explicit) == (5, 6)
  assert ops.deconv_output_range((5, 6), (3, 3)) == ops.deconv_output_range((5, 6), (3, 3), **explicit)
  assert ops.deconv_output_range((5, 6), (3, 3)) == ((5, 5), (6, 6))
  assert ops.deconv_output_shape((5, 6), (3, 3)) == ops.deconv_output_shape((5, 6), (3, 3), **explicit) == (5, 6)
  assert ops.explicit_padding("SAME", (5, 6), (3, 4)) == ops.explicit_padding("SAME", (5, 6), (3, 4), 1, 1)
  assert ops.explicit_padding("SAME", (5, 6), (3, 4)) == ((1, 1), (1, 2))
  # with numeric padding, where SAME's sizes do not depend on the dilation
  assert ops.deconv_output_range((5, 6), (3, 3), padding=0) == ((7, 7), (8, 8))
  assert ops.deconv_output_shape((5, 6), (3, 3), padding=0) == (7, 8)
  assert ops.conv_output_shape((7, 8), (3, 3), padding=0) == (5, 6)
  functions = {
    "conv_output_shape": lambda **kw: ops.conv_output_shape((5, 6), (3, 3), **kw),
    "deconv_output_range": lambda **kw: ops.deconv_output_range((5, 6), (3, 3), **kw),
    "deconv_output_shape": lambda **kw: ops.deconv_output_shape((5, 6), (3, 3), **kw),
    "explicit_padding": lambda **kw: ops.explicit_padding(kw.pop("padding", 0), (5, 6), (3, 3), **kw),
  }
  cases = [
    ({"strides": 0}, "strides must be >= 1, got 0"),
    ({"dilation": (1,)}, "dilation must be an int or a pair of ints, got (1,)"),
    ({"padding": -1}, "padding must be >= 0, got -1"),
    ({"padding": ((1, 2), 3)}, "padding must be 'SAME', 'VALID', an int, 2 ints or 2 (lo, hi) pairs, got ((1, 2), 3)"),
    (
      {"padding": ((1, 2), (1, 2, 3))},
      "padding must be 'SAME', 'VALID', an int, 2 ints or 2 (lo, hi) pairs, got ((1, 2), (1, 2, 3))",
    ),
  ]
  for name, call in functions.items():
    for kwargs, message in cases:
      with pytest.raises(ValueError) as info:
        call(**kwargs)
      assert str(info.value) == message, name
  with pytest.raises(ValueError) as info:
    ops.conv_output_shape((2, 6), (5, 3), padding=0)
  assert str(info.value) == "kernel of effective size 5 does not fit input size 2 padded by (0, 0) on spatial axis 0"


def test_defaults_are_stride_1_same_padding_no_dilation_one_group():
  """Every op called with no options is the one with ``strides=1, padding="SAME", dilation=1, groups=1`` written out."""
  x, y = jax.random.normal(jax.random.key(0), (2, 1, 5, 6, 4))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 4, 4))
  explicit = {"strides": 1, "padding": "SAME", "dilation": 1, "groups": 1}
  for op, args in [
    (ops.conv, (x, kernel)),
    (ops.conv2d, (x, kernel)),
    (ops.deconv, (y, kernel)),
    (ops.deconv2d, (y, kernel)),
    (ops.conv_kernel_grad, (x, y, (3, 3))),
    (ops.conv_matrix, (kernel, (2, 3, 4))),
  ]:
    np.testing.assert_array_equal(op(*args), op(*args, **explicit), err_msg=op.__name__)
  # and those options are what they say: SAME keeps the size, one group mixes every channel.
  assert ops.conv(x, kernel).shape == (1, 5, 6, 4)
  reference = lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=DN)
  np.testing.assert_allclose(ops.conv(x, kernel), reference, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# 10. Max pooling.
# ----------------------------------------------------------------------------


def reduce_window_max(x, window, strides):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), "VALID")


def pool_and_grads(x, ct, window, strides, wp, sp):
  """max_pool and reduce_window, and the gradients of <pool(x), ct>, in one computation."""

  def ours(v):
    return jnp.vdot(ops.max_pool(v, window, strides), ct)

  def ref(v):
    return jnp.vdot(reduce_window_max(v, wp, sp), ct)

  def both(x):
    return ops.max_pool(x, window, strides), reduce_window_max(x, wp, sp), jax.grad(ours)(x), jax.grad(ref)(x)

  return jit_call(both, x)


@st.composite
def pool_cases(draw):
  window, wp = int_or_pair(draw, 1, 3)
  strides, sp = (None, wp) if draw(st.booleans()) else int_or_pair(draw, 1, 3)
  shape = (draw(st.integers(1, 2)), draw(st.integers(wp[0], 9)), draw(st.integers(wp[1], 9)), draw(st.integers(1, 3)))
  return window, strides, wp, sp, shape


@pytest.mark.slow
@SETTINGS
@given(pool_cases(), SEEDS)
def test_max_pool_equals_reduce_window(case, seed):
  window, strides, wp, sp, shape = case
  x = distinct(seed, shape)
  out_hw = ops.max_pool_output_shape(shape[1:3], window, strides)
  ct = randn(seed, (shape[0], *out_hw, shape[3]))
  out, expected, grad, expected_grad = pool_and_grads(x, ct, window, strides, wp, sp)
  assert out.shape == expected.shape
  np.testing.assert_array_equal(out, expected)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 7, 9, 2), (2, 4, 6, 1)])
def test_max_pool_window_equals_stride_eager(shape):
  # Eager, not jitted; includes sizes that the window does not divide.
  x = distinct(1, shape)
  out = ops.max_pool(x, 2)
  np.testing.assert_array_equal(out, reduce_window_max(x, (2, 2), (2, 2)))
  ct = randn(2, out.shape)
  grad = jax.grad(lambda v: jnp.vdot(ops.max_pool(v, 2), ct))(x)
  np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.vdot(reduce_window_max(v, (2, 2), (2, 2)), ct))(x))


@pytest.mark.parametrize("shape", [(1, 7, 9, 2), (2, 5, 5, 1), (1, 3, 4, 3)])
def test_max_pool_overlapping(shape):
  x = distinct(1, shape)
  out = ops.max_pool(x, 3, 2)
  np.testing.assert_array_equal(out, reduce_window_max(x, (3, 3), (2, 2)))
  ct = randn(2, out.shape)
  grad = jax.grad(lambda v: jnp.vdot(ops.max_pool(v, 3, 2), ct))(x)
  np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.vdot(reduce_window_max(v, (3, 3), (2, 2)), ct))(x))


def test_max_pool_drops_trailing_and_rejects_small_input():
  x = jnp.arange(2.0 * 5 * 7).reshape(1, 5, 7, 2)
  out = ops.max_pool(x, 2)
  assert out.shape == (1, 2, 3, 2)
  np.testing.assert_array_equal(out, x[:, 1:4:2, 1:6:2])
  for window in (6, (6, 2), (2, 8)):  # too tall, too wide, or both
    message = f"max_pool window {ops.as_pair(window, 'window')} is larger than the 5x7 input"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
      ops.max_pool(x, window)


def test_max_pool_forward_derivative_is_the_tangent_at_each_maximum():
  x, dx = distinct(0, (2, 6, 8, 3)), randn(1, (2, 6, 8, 3))
  for window, strides in [(2, None), ((2, 3), None), (3, 2)]:  # the custom JVP's path, and reduce_window's
    _, tangent = jax.jvp(lambda v, w=window, s=strides: ops.max_pool(v, w, s), (x,), (dx,))
    pw, ps = ops.as_pair(window, "window"), ops.as_pair(strides or window, "strides")
    _, want = jax.jvp(lambda v, pw=pw, ps=ps: reduce_window_max(v, pw, ps), (x,), (dx,))
    np.testing.assert_array_equal(tangent, want)


def test_pooling_defaults_to_2x2_windows_at_their_own_stride_and_names_bad_arguments():
  x = jnp.arange(2.0 * 6 * 8).reshape(1, 6, 8, 2)[..., ::-1]
  np.testing.assert_array_equal(ops.max_pool(x), ops.max_pool(x, (2, 2), (2, 2)))
  switches = ops.max_pool_switches(x)
  np.testing.assert_array_equal(switches, ops.max_pool_switches(x, (2, 2), (2, 2)))
  assert ops.max_pool_output_shape((6, 8)) == (3, 4) and ops.max_pool_output_shape((6, 8), 3) == (2, 2)
  y = ops.max_pool(x)
  np.testing.assert_array_equal(
    ops.unpool_with_switches(y, switches, (6, 8)), ops.unpool_with_switches(y, switches, (6, 8), 2)
  )
  for name, call in [
    ("window", lambda: ops.max_pool(x, 0)),
    ("strides", lambda: ops.max_pool(x, 2, 0)),
    ("window", lambda: ops.max_pool_switches(x, 0)),
    ("strides", lambda: ops.max_pool_switches(x, 2, 0)),
    ("window", lambda: ops.max_pool_output_shape((6, 8), 0)),
    ("strides", lambda: ops.max_pool_output_shape((6, 8), 2, 0)),
    ("strides", lambda: ops.unpool_with_switches(y, switches, (6, 8), 0)),
  ]:
    with pytest.raises(ValueError, match=f"^{name} must be >= 1, got 0$"):
      call()
  message = "switches of shape (1, 2, 4, 2, 2, 2) do not match pooled values of shape (1, 3, 4, 2)"
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    ops.unpool_with_switches(y, switches[:, :2], (6, 8))


def unpool_and_vjp(x, ct, window, strides):
  """unpool_with_switches(ct, switches of x) and the VJP of max_pool at x, in one computation."""

  def both(x, ct):
    unpooled = ops.unpool_with_switches(ct, ops.max_pool_switches(x, window, strides), x.shape[1:3], strides)
    return unpooled, jax.vjp(lambda v: ops.max_pool(v, window, strides), x)[1](ct)[0]

  return jax.jit(both)(x, ct)


def tied_windows(x, window, strides):
  """How many pooling windows of ``x`` [N, H, W, C] hold their maximum more than once."""
  (kh, kw) = ops.as_pair(window, "window")
  sh, sw = ops.as_pair(window if strides is None else strides, "strides")
  x, count = np.asarray(x), 0
  for r in range(0, x.shape[1] - kh + 1, sh):
    for c in range(0, x.shape[2] - kw + 1, sw):
      patch = x[:, r : r + kh, c : c + kw]  # [N, kh, kw, C]
      count += int(np.sum(np.sum(patch == patch.max(axis=(1, 2), keepdims=True), axis=(1, 2)) > 1))
  return count


# Each kind of input is run (not drawn), and the tie kinds keep only examples that have a tie.
@pytest.mark.slow
@pytest.mark.parametrize("values", ["distinct", "relu", "few_values"])
@settings(SETTINGS, max_examples=12)
@given(case=pool_cases(), seed=SEEDS)
def test_unpool_with_switches_is_the_max_pool_vjp(values, case, seed):
  window, strides, _, _, shape = case
  x = {
    "distinct": lambda: distinct(seed, shape),
    "relu": lambda: jnp.maximum(randn(seed, shape), 0),  # ties: windows of zeros
    "few_values": lambda: jax.random.randint(jax.random.key(seed), shape, 0, 2).astype(jnp.float32),
  }[values]()
  assume(values == "distinct" or tied_windows(x, window, strides) > 0)
  out_hw = ops.max_pool_output_shape(shape[1:3], window, strides)
  ct = randn(seed + 1, (shape[0], *out_hw, shape[3]))
  unpooled, vjp = unpool_and_vjp(x, ct, window, strides)
  np.testing.assert_allclose(unpooled, vjp, rtol=1e-6, atol=1e-6)


def test_switches_and_the_max_pool_gradient_on_ties():
  # One window with maxima at (0, 0), (0, 1) and (1, 1): all of it goes to the first in row-major order, (0, 0).
  x = jnp.array([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 2, 1)
  first = ops.unpool_with_switches(jnp.ones((1, 1, 1, 1)), ops.max_pool_switches(x, 2), (2, 2))
  np.testing.assert_array_equal(first[0, ..., 0], [[1, 0], [0, 0]])
  # An all-zero window (after a ReLU): its first position.
  zeros = ops.unpool_with_switches(
    jnp.full((1, 1, 1, 1), 5.0), ops.max_pool_switches(jnp.zeros((1, 2, 2, 1)), 2), (2, 2)
  )
  np.testing.assert_array_equal(zeros[0, ..., 0], [[5, 0], [0, 0]])
  # Overlapping windows (reduce_window): the same rule.
  x = jnp.array([[0.0, 2.0, 2.0], [2.0, 0.0, 2.0], [2.0, 2.0, 0.0]]).reshape(1, 3, 3, 1)
  switches = ops.max_pool_switches(x, 2, 1)
  overlapping = ops.unpool_with_switches(jnp.ones((1, 2, 2, 1)), switches, (3, 3), 1)
  # Windows at (0, 0) and (0, 1) both pick x[0, 1]; (1, 0) picks x[1, 0]; (1, 1) picks x[1, 2].
  np.testing.assert_array_equal(overlapping[0, ..., 0], [[0, 2, 0], [1, 0, 1], [0, 0, 0]])
  for values, pooled in [(first, 1), (zeros, 5), (overlapping, 4)]:  # nothing lost, nothing made
    assert float(values.sum()) == pytest.approx(pooled)
  # max_pool's gradient routes ties the same way, through both of its paths (non-overlapping windows, overlapping).
  for pooled_x, window, strides, ct, expected in [
    (jnp.array([[1.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 2, 1), 2, None, jnp.ones((1, 1, 1, 1)), first),
    (jnp.zeros((1, 2, 2, 1)), 2, None, jnp.full((1, 1, 1, 1), 5.0), zeros),
    (x, 2, 1, jnp.ones((1, 2, 2, 1)), overlapping),
  ]:
    (grad,) = jax.vjp(lambda v, w=window, s=strides: ops.max_pool(v, w, s), pooled_x)[1](ct)
    np.testing.assert_array_equal(grad, expected)


def tied(seed, shape, kind):
  """Inputs with ties on purpose: ReLU outputs (all-zero windows), few distinct values, or all zeros."""
  rng = np.random.default_rng(seed)
  values = {
    "relu": lambda: np.maximum(rng.standard_normal(shape) - 0.5, 0),
    "few_values": lambda: rng.integers(0, 3, shape),
    "zeros": lambda: np.zeros(shape),
  }[kind]()
  return jnp.asarray(values.astype(np.float32))


@pytest.mark.slow
@settings(SETTINGS, max_examples=40)
@given(pool_cases(), SEEDS, st.sampled_from(["relu", "few_values", "zeros"]))
def test_max_pool_gradient_equals_torch_with_ties(case, seed, kind):
  # PyTorch's max_pool2d gradient sends each window's signal to its first maximum in row-major order; so do ours
  # (reshape-and-max and reduce_window) and the unpooling with our switches. Forward mode takes the same switch.
  torch = pytest.importorskip("torch")
  window, strides, wp, sp, shape = case
  x = tied(seed, shape, kind)
  ct = randn(seed + 1, (shape[0], *ops.max_pool_output_shape(shape[1:3], window, strides), shape[3]))

  def ours(x, ct):
    pool = lambda v: ops.max_pool(v, window, strides)
    grad = jax.vjp(pool, x)[1](ct)[0]
    unpooled = ops.unpool_with_switches(ct, ops.max_pool_switches(x, window, strides), x.shape[1:3], strides)
    reference = jax.vjp(lambda v: reduce_window_max(v, wp, sp), x)[1](ct)[0]
    dx = jnp.cos(x + jnp.arange(x.size, dtype=x.dtype).reshape(x.shape))  # a tangent with distinct values
    return (
      grad,
      unpooled,
      reference,
      jax.jvp(pool, (x,), (dx,))[1],
      jax.jvp(lambda v: reduce_window_max(v, wp, sp), (x,), (dx,))[1],
    )

  grad, unpooled, reference, tangent, reference_tangent = jit_call(ours, x, ct)
  x_t = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
  pooled = torch.nn.functional.max_pool2d(x_t, wp, sp)
  (pooled * torch.from_numpy(np.asarray(ct).transpose(0, 3, 1, 2).copy())).sum().backward()
  expected = x_t.grad.numpy().transpose(0, 2, 3, 1)
  for got in (grad, unpooled, reference):
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(tangent, reference_tangent, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# 11. Differentiable in the kernel too, forward and reverse.
# ----------------------------------------------------------------------------


@pytest.mark.slow
@settings(SETTINGS, max_examples=30)
@given(conv_configs(groups=(1,)), SEEDS)
def test_kernel_grad_equals_lax_conv_transpose(cfg, seed):
  x, k, y = arrays(cfg, seed)
  lax_padding, in_size = lax_padding_for(cfg)
  ct = randn(seed + 3, (cfg["y_shape"][0], *in_size, cfg["x_shape"][-1]))

  def ours(kernel, y):
    return ops.deconv(y, kernel, **cfg["kw"], input_shape=in_size)

  def reference(kernel, y):
    return lax_deconv(y, kernel, cfg, lax_padding)

  def grads_and_tangents(k, y):
    grad = lambda f: jax.grad(lambda k, y: jnp.vdot(f(k, y), ct), (0, 1))(k, y)
    # Forward mode too: the kernel tangent k -> deconv(y, k) goes through its own rule.
    tangent = lambda f: jax.jvp(f, (k, y), (k[::-1], y * 2))[1]
    return (grad(ours), tangent(ours)), (grad(reference), tangent(reference))

  (grads, tangent), (expected_grads, expected_tangent) = jit_call(grads_and_tangents, k, y)
  for g, e in zip(grads, expected_grads):
    np.testing.assert_allclose(g, e, **TOL)
  np.testing.assert_allclose(tangent, expected_tangent, **TOL)
  del x


@pytest.mark.parametrize("padding", ["SAME", "explicit"])
def test_conv_kernel_grad_with_every_axis_different(padding):
  """The fast tier's case of the property below, in 3-D, where the gradient is ours (2-D ones folded): each axis its
  own size, stride, dilation and padding, so a fold that reads the wrong axis (the depth's stride from the height's)
  cannot pass."""
  n = 3
  sizes, kernel_size = (9, 8, 7)[:n], (3, 2, 2)[:n]
  strides, dilation = (2, 1, 3)[:n], (1, 2, 1)[:n]
  pads = "SAME" if padding == "SAME" else ((1, 0), (0, 2), (2, 1))[:n]
  x = jax.random.normal(jax.random.key(n), (2, *sizes, 3))
  k = jax.random.normal(jax.random.key(10 + n), (*kernel_size, 3, 4))
  conv = lambda k: lax.conv_general_dilated(x, k, strides, pads, rhs_dilation=dilation, dimension_numbers=DNS[n])
  g = jax.random.normal(jax.random.key(20 + n), conv(k).shape)
  expected = jax.grad(lambda k: jnp.vdot(conv(k), g))(k)
  ours = ops.conv_kernel_grad(x, g, kernel_size, strides=strides, padding=pads, dilation=dilation)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@SETTINGS
@given(conv_configs(), SEEDS)
def test_conv_kernel_grad_is_the_conv_gradient(cfg, seed):
  # conv_kernel_grad (3-D: folded into 2-D ones) against jax.grad of the conv in its kernel.
  x, k, y = arrays(cfg, seed)
  kw = cfg["kw"]

  def both(x, k, y):
    expected = jax.grad(lambda k: jnp.vdot(ops.conv(x, k, **kw), y))(k)
    return ops.conv_kernel_grad(x, y, k.shape[: cfg["n"]], **kw), expected

  ours, expected = jit_call(both, x, k, y)
  assert ours.shape == k.shape
  np.testing.assert_allclose(ours, expected, **TOL)


@pytest.mark.parametrize("n", NDIMS)
def test_kernel_gradient_is_no_input_dilated_convolution(n):
  # d/dk <deconv(y, k), g> == d/dk <conv(g, k), y>: the program JAX hands XLA for the kernel gradient is the conv's
  # kernel gradient (3-D: one 2-D one per depth offset), where differentiating lax.conv_transpose hands it an
  # input-dilated (lhs_dilate = s) convolution, which XLA runs many times slower (see the benchmark).
  y, k, ct = jnp.ones((2, *(3,) * n, 4)), jnp.ones((*(4,) * n, 2, 4)), jnp.ones((2, *(6,) * n, 2))
  paths = {
    "ops": lambda k, y: ops.deconv(y, k, strides=2),
    "lax": lambda k, y: lax.conv_transpose(y, k, (2,) * n, "SAME", dimension_numbers=DNS[n], transpose_kernel=True),
  }
  hlo = {
    name: jax.jit(jax.grad(lambda k, y, ct, f=f: jnp.vdot(f(k, y), ct))).lower(k, y, ct).as_text()
    for name, f in paths.items()
  }
  input_dilated = re.compile(r"lhs_dilate = \[[\d, ]*2")
  assert input_dilated.search(hlo["lax"])
  assert not input_dilated.search(hlo["ops"])
  assert hlo["ops"].count("stablehlo.convolution") == (4 if n == 3 else 1)


def test_second_order_derivatives():
  # grad of grad, and forward over reverse, through the custom derivative: equal to lax's.
  y, k = randn(0, (1, 3, 3, 2)), randn(1, (3, 3, 2, 2))
  paths = [
    lambda k, y: ops.deconv2d(y, k, strides=2, padding=1, output_padding=1),
    lambda k, y: lax.conv_transpose(y, k, (2, 2), ((1, 2), (1, 2)), dimension_numbers=DN, transpose_kernel=True),
  ]
  results = []
  for f in paths:
    loss = lambda k, y, f=f: jnp.sum(f(k, y) ** 3)
    hvp = jax.jvp(jax.grad(loss), (k, y), (jnp.ones_like(k), jnp.zeros_like(y)))[1]
    results.append((jax.grad(lambda k, loss=loss: jnp.sum(jax.grad(loss, 1)(k, y) ** 2))(k), hvp))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------
# Up-sampling: depth_to_space, resize.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("r,c", [(2, 3), (3, 2), (1, 5)])
def test_depth_to_space_matches_numpy_loop(r, c):
  x = np.asarray(_normal(0, (2, 3, 4, r * r * c)))
  expected = np.zeros((2, 3 * r, 4 * r, c), np.float32)
  for n in range(2):
    for h in range(3):
      for w in range(4):
        for i in range(r):
          for j in range(r):
            for k in range(c):
              expected[n, h * r + i, w * r + j, k] = x[n, h, w, (i * r + j) * c + k]
  np.testing.assert_array_equal(ops.depth_to_space(jnp.asarray(x), r), expected)


def test_depth_to_space_rejects_bad_input():
  for x, r, message in [
    (jnp.zeros((1, 2, 2, 6)), 2, "x_NHWC has 6 channels, not a multiple of r * r = 4"),
    (jnp.zeros((2, 2, 4)), 2, "x_NHWC must be [N, H, W, C], got shape (2, 2, 4)"),
    (jnp.zeros((1, 2, 2, 4)), 0, "r must be a positive int, got 0"),
  ]:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
      ops.depth_to_space(x, r)


@pytest.mark.parametrize("factor", [2, (2, 3)])
def test_resize_nearest_is_repeat_and_bilinear_interpolates(factor):
  fh, fw = (factor, factor) if isinstance(factor, int) else factor
  x = _normal(0, (2, 3, 4, 2))
  np.testing.assert_array_equal(ops.resize(x, factor, "nearest"), jnp.repeat(jnp.repeat(x, fh, 1), fw, 2))
  smooth = ops.resize(x, factor, "bilinear")
  assert smooth.shape == (2, 3 * fh, 4 * fw, 2)
  assert not np.allclose(smooth, ops.resize(x, factor, "nearest"))
  np.testing.assert_allclose(ops.resize(jnp.full((1, 3, 4, 1), 0.7), factor, "bilinear"), 0.7, rtol=1e-6)


def test_resize_rejects_bad_arguments():
  for x, factor, method, message in [
    (jnp.zeros((1, 2, 2, 1)), 2, "bicubic", "method must be 'nearest' or 'bilinear', got 'bicubic'"),
    (jnp.zeros((1, 2, 2, 1)), 0, "nearest", "factor must be >= 1, got 0"),
    (jnp.zeros((2, 2, 1)), 2, "nearest", "x must be [N, H, W, C], got shape (2, 2, 1)"),
  ]:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
      ops.resize(x, factor, method)


def _normal(seed: int, shape) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)
