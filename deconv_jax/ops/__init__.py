"""The math: convolution, its adjoint, pooling and up-sampling. Every such primitive the models use is here.

The one idea of this codebase: for a fixed kernel ``k`` the convolution ``x -> conv(x, k)`` is a linear map,
and its adjoint is the *transposed convolution* ("deconvolution")::

    <conv(x, k), y> == <x, deconv(y, k)>      for all x, y,

and in JAX the adjoint is the VJP: ``deconv`` is ``jax.vjp`` of ``conv`` (`adjoint`). Nothing here decides
how a step is compiled or how fast it runs on a backend; that is `deconv_jax.xla_cpu`.

* `adjoint`: ``conv``, ``deconv`` (1 to 3 spatial axes; ``conv2d`` / ``deconv2d``), ``conv_kernel_grad``,
  ``conv_matrix``;
* `shapes`: padding forms and the size arithmetic in both directions;
* `pooling`: ``max_pool`` with one switch per window, its switches, and unpooling;
* `upsampling`: the sub-pixel shuffle and resizing;
* `torch_interop`: a PyTorch ``ConvTranspose`` weight as this package's forward kernel.
"""

from deconv_jax.ops.adjoint import conv, conv2d, conv_kernel_grad, conv_matrix, deconv, deconv2d
from deconv_jax.ops.pooling import max_pool, max_pool_output_shape, max_pool_switches, unpool_with_switches
from deconv_jax.ops.shapes import (
  ExplicitPadding,
  IntOrPair,
  Padding,
  Pair,
  as_pair,
  as_tuple,
  conv_output_shape,
  deconv_output_range,
  deconv_output_shape,
  explicit_padding,
)
from deconv_jax.ops.torch_interop import from_torch_conv_transpose
from deconv_jax.ops.upsampling import depth_to_space, resize

__all__ = [
  "ExplicitPadding",
  "IntOrPair",
  "Padding",
  "Pair",
  "as_pair",
  "as_tuple",
  "conv",
  "conv2d",
  "conv_kernel_grad",
  "conv_matrix",
  "conv_output_shape",
  "deconv",
  "deconv2d",
  "deconv_output_range",
  "deconv_output_shape",
  "depth_to_space",
  "explicit_padding",
  "from_torch_conv_transpose",
  "max_pool",
  "max_pool_output_shape",
  "max_pool_switches",
  "resize",
  "unpool_with_switches",
]
