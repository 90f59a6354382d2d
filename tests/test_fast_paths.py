"""The fast paths compute what the plain ones do: same values and gradients, another float order.

On CPU, `ops.conv` runs a stride-1 2-D conv as patches times a matrix, and the train steps take
a large batch's gradient in chunks (`optim.mean_and_grad`); inside ``ops.plain_xla()`` every conv
is XLA's and batches are whole. Each check jits a new function per path: jit traces inside the context.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import ops

pytestmark = pytest.mark.skipif(
  jax.default_backend() != "cpu", reason="the fast paths differ from the plain ones on CPU"
)


def _both_paths(fn, *args):
  fast = jax.jit(lambda *a: fn(*a))(*args)
  with ops.plain_xla():
    plain = jax.jit(lambda *a: fn(*a))(*args)
  return fast, plain


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = max(float(np.max(np.abs(np.asarray(y)))), 1.0)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize(
  "kw",
  [{"padding": "VALID"}, {"padding": "SAME"}, {"padding": ((2, 0), (1, 3)), "dilation": (2, 1)}, {"padding": 1}],
)
def test_conv_by_patches_equals_xla_conv_values_and_gradients(kw):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 12, 11, 5))
  kernel = jax.random.normal(kk, (3, 2, 5, 7))
  out_shape = jax.eval_shape(lambda: ops.conv(x, kernel, **kw)).shape
  g = jax.random.normal(kg, out_shape)

  def value_and_grads(x, kernel):
    y = ops.conv(x, kernel, **kw)
    return y, jax.grad(lambda x, k: jnp.vdot(ops.conv(x, k, **kw), g), argnums=(0, 1))(x, kernel)

  fast, plain = _both_paths(value_and_grads, x, kernel)
  _assert_trees_close(fast, plain)


def test_on_cpu_a_stride_1_conv_is_a_dot_and_a_strided_one_stays_xla_conv():
  x, kernel = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
  hlo = lambda **kw: jax.jit(lambda x, k: ops.conv(x, k, **kw)).lower(x, kernel).compile().as_text()
  assert "convolution(" not in hlo(strides=1) and " dot(" in hlo(strides=1)
  assert "convolution(" in hlo(strides=2)
  with ops.plain_xla():
    assert "convolution(" in hlo(strides=1)


def test_stride_1_deconv_and_its_kernel_gradient_equal_the_plain_path():
  ky, kk = jax.random.split(jax.random.key(1))
  y, kernel = jax.random.normal(ky, (2, 10, 10, 6)), jax.random.normal(kk, (4, 4, 3, 6))

  def value_and_grads(y, kernel):
    f = lambda y, k: ops.deconv(y, k, padding="SAME")
    return f(y, kernel), jax.grad(lambda y, k: jnp.sum(f(y, k) ** 2), argnums=(0, 1))(y, kernel)

  _assert_trees_close(*_both_paths(value_and_grads, y, kernel))
