"""Flax Linen modules. Every convolution, transposed convolution and pooling goes through `ops`.

`Conv` and `Deconv` share one parameter layout: the HWIO kernel of the forward
convolution. A `Deconv` is the adjoint of the `Conv` with the same kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deconv_jax import ops

Initializer = Callable[..., jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "leaky_relu": nn.leaky_relu,
  "elu": nn.elu,
  "gelu": nn.gelu,
  "silu": nn.silu,
  "tanh": jnp.tanh,
}


class Conv(nn.Module):
  """``y = conv2d(x, kernel) + bias``; x ``[N, H, W, Cin]``, kernel ``[kh, kw, Cin // groups, features]``."""

  features: int
  kernel_size: ops.IntOrPair = 3
  strides: ops.IntOrPair = 1
  padding: ops.Padding = "SAME"
  dilation: ops.IntOrPair = 1
  groups: int = 1
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = ops.as_pair(self.kernel_size, "kernel_size")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1] // self.groups, self.features))
    y = ops.conv2d(x, kernel, strides=self.strides, padding=self.padding, dilation=self.dilation, groups=self.groups)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class Deconv(nn.Module):
  """Transposed convolution ``x = deconv2d(y, kernel) + bias``, the adjoint of `Conv`.

  The parameter ``kernel`` is the *forward* conv's HWIO kernel
  ``[kh, kw, features // groups, Cin]`` (``features`` = this layer's output
  channels, ``Cin`` = its input channels), so ``Deconv`` with the kernel of a
  ``Conv(features=Cin)`` on ``features``-channel inputs is that conv's exact adjoint.
  The default init scales by the deconv's fan-in ``kh * kw * Cin``, as flax
  ``ConvTranspose`` does.

  y ``[N, h, w, Cin]`` -> ``[N, H, W, features]``, ``H = h * s`` for ``"SAME"``,
  else the PyTorch formula with ``output_padding`` (see `ops.deconv2d`); call with
  ``output_shape=(H, W)`` to pick another of the valid sizes.
  """

  features: int
  kernel_size: ops.IntOrPair = 4
  strides: ops.IntOrPair = 2
  padding: ops.Padding = "SAME"
  dilation: ops.IntOrPair = 1
  groups: int = 1
  output_padding: ops.IntOrPair = 0
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_out", "truncated_normal")
  bias_init: Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, y: jax.Array, output_shape: Sequence[int] | None = None) -> jax.Array:
    kh, kw = ops.as_pair(self.kernel_size, "kernel_size")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, self.features // self.groups, y.shape[-1]))
    x = ops.deconv2d(
      y,
      kernel,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
      groups=self.groups,
      input_shape=output_shape,
      output_padding=self.output_padding,
    )
    if self.use_bias:
      x = x + self.param("bias", self.bias_init, (self.features,))
    return x


class CNN(nn.Module):
  """Image classifier: ``len(features)`` x [Conv, activation, MaxPool], Flatten, Dense(+act)..., Dense logits.

  The default is the classic Keras MNIST network: Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense512-Dense10
  (3x3 VALID convs, 2x2 pools). On ``[N, 28, 28, 1]`` the maps are 26->13->11->5->3->1.

  Every stage's output is sown into the ``"intermediates"`` collection under a
  stable name, so attribution and feature metrics can reach it (see `intermediates`):
  ``act{i}`` (the rectified map of conv layer ``conv{i}``), ``pool{i}`` for i = 1..len(features),
  then ``hidden{j}`` (dense layer ``dense{j}`` after the activation; the last is the
  penultimate feature vector)
  and ``logits``. The activation is a field so it can be swapped with ``clone``.
  """

  features: Sequence[int] = (32, 64, 128)
  kernel_size: ops.IntOrPair = 3
  padding: str = "VALID"
  pool: int = 2
  dense: Sequence[int] = (512,)
  num_classes: int = 10
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images ``[N, H, W, C]`` float -> logits ``[N, num_classes]``."""
    x = images
    for i, width in enumerate(self.features, start=1):
      x = self.activation(Conv(width, self.kernel_size, padding=self.padding, name=f"conv{i}")(x))
      self.sow("intermediates", f"act{i}", x)
      if self.pool > 1:
        x = ops.max_pool(x, self.pool)
        self.sow("intermediates", f"pool{i}", x)
    x = x.reshape(x.shape[0], -1)
    for j, width in enumerate(self.dense, start=1):
      x = self.activation(nn.Dense(width, name=f"dense{j}")(x))
      self.sow("intermediates", f"hidden{j}", x)
    logits = nn.Dense(self.num_classes, name="head")(x)
    self.sow("intermediates", "logits", logits)
    return logits


def intermediates(model: nn.Module, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
  """All sown activations of ``model`` on ``images``, by name (``{"act1": [N, H, W, C], ...}``)."""
  _, state = model.apply(variables, images, mutable=["intermediates"])
  return {name: values[-1] for name, values in state["intermediates"].items()}


def cnn_from_config(model_cfg: Any, num_classes: int) -> CNN:
  """Builds `CNN` from ``config.model`` (keys: features, kernel_size, padding, pool, dense, activation)."""
  return CNN(
    features=tuple(model_cfg.features),
    kernel_size=model_cfg.kernel_size,
    padding=model_cfg.padding,
    pool=model_cfg.pool,
    dense=tuple(model_cfg.dense),
    num_classes=num_classes,
    activation=ACTIVATIONS[model_cfg.activation],
  )
