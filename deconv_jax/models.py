"""Flax Linen modules. Every convolution, transposed convolution and pooling goes through `ops`.

`Conv` and `Deconv` share one parameter layout: the HWIO kernel of the forward
convolution. A `Deconv` is the adjoint of the `Conv` with the same kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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
  """``y = conv(x, kernel) + bias``; x ``[N, *spatial, Cin]``, kernel ``[*kernel_size, Cin // groups, features]``.

  1 to 3 spatial axes; ``kernel_size`` is an int or one size per axis. In 2-D the kernel is HWIO.
  """

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
    kernel_size = ops.as_tuple(self.kernel_size, x.ndim - 2, "kernel_size")
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, x.shape[-1] // self.groups, self.features))
    y = ops.conv(x, kernel, strides=self.strides, padding=self.padding, dilation=self.dilation, groups=self.groups)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,))
    return y


class Deconv(nn.Module):
  """Transposed convolution ``x = deconv(y, kernel) + bias``, the adjoint of `Conv`, with 1 to 3 spatial axes.

  The parameter ``kernel`` is the *forward* conv's kernel
  ``[*kernel_size, features // groups, Cin]`` (HWIO in 2-D; ``features`` = this layer's output
  channels, ``Cin`` = its input channels), so ``Deconv`` with the kernel of a
  ``Conv(features=Cin)`` on ``features``-channel inputs is that conv's exact adjoint.
  The default init scales by the deconv's fan-in ``kh * kw * Cin``, as flax
  ``ConvTranspose`` does.

  y ``[N, h, w, Cin]`` -> ``[N, H, W, features]``, ``H = h * s`` for ``"SAME"``,
  else the PyTorch formula with ``output_padding`` (see `ops.deconv`); call with
  ``output_shape=(H, W)`` to pick another of the valid sizes. `from_torch` takes a
  ``torch.nn.ConvTranspose{1,2,3}d`` as it is.
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
    kernel_size = ops.as_tuple(self.kernel_size, y.ndim - 2, "kernel_size")
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, self.features // self.groups, y.shape[-1]))
    x = ops.deconv(
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

  @classmethod
  def from_torch(cls, module: Any) -> tuple[Deconv, dict[str, Any]]:
    """A ``torch.nn.ConvTranspose{1,2,3}d`` as ``(layer, variables)``, computing the same map channels-last.

    ``layer.apply(variables, y)`` equals ``module(y moved to channels-first)`` moved to channels-last, and
    ``layer.apply(variables, y, output_shape=s)`` equals ``module(..., output_size=s)``. The weight
    ``[Cin, features // groups, *kernel_size]`` becomes the forward kernel (`ops.from_torch_conv_transpose`);
    stride, padding, output_padding, dilation, groups and the bias carry over. Only ``padding_mode="zeros"``
    exists for PyTorch's transposed convs.
    """
    if getattr(module, "padding_mode", "zeros") != "zeros":
      raise ValueError(f"module.padding_mode must be 'zeros' for a transposed conv, got {module.padding_mode!r}")
    kernel, kw = ops.from_torch_conv_transpose(
      module.weight,
      stride=tuple(module.stride),
      padding=tuple(module.padding),
      output_padding=tuple(module.output_padding),
      groups=module.groups,
      dilation=tuple(module.dilation),
    )
    layer = cls(
      features=kernel.shape[-2] * kw["groups"],
      kernel_size=tuple(kernel.shape[:-2]),
      use_bias=module.bias is not None,
      **kw,
    )
    params = {"kernel": kernel}
    if module.bias is not None:
      params["bias"] = jnp.asarray(module.bias.detach().cpu().numpy())
    return layer, {"params": params}


PADDINGS = ("SAME", "VALID")  # of the CNN's convolutions


class CNN(nn.Module):
  """Image classifier: ``len(features)`` x [Conv, activation, MaxPool], Flatten, Dense(+act)..., Dense logits.

  The default is the classic Keras MNIST network: Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense512-Dense10
  (3x3 VALID convs, 2x2 pools). On ``[N, 28, 28, 1]`` the maps are 26->13->11->5->3->1.

  Every stage's output is sown into the ``"intermediates"`` collection under a
  stable name, so attribution and feature metrics can reach it (see `attribution.activations`):
  ``act{i}`` (the rectified map of conv layer ``conv{i}``), ``pool{i}`` for i = 1..len(features),
  then ``hidden{j}`` (dense layer ``dense{j}`` after the activation; the last is the
  penultimate feature vector)
  and ``logits``.
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


# ----------------------------------------------------------------------------
# Generators, discriminator, autoencoder.
# ----------------------------------------------------------------------------

OUTPUT_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "tanh": jnp.tanh,
  "sigmoid": nn.sigmoid,
  "none": lambda x: x,
}
RESIZE_METHODS = ("nearest", "bilinear")  # jax.image.resize methods a resize_conv generator may use


def _output_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in OUTPUT_ACTIVATIONS:
    raise ValueError(f"output_activation must be one of {sorted(OUTPUT_ACTIVATIONS)}, got {name!r}")
  return OUTPUT_ACTIVATIONS[name]


def _check_labels(labels: jax.Array | None, num_classes: int, batch: int, module: str) -> None:
  if num_classes > 0 and labels is None:
    raise ValueError(f"{module} has num_classes={num_classes}: pass integer labels [N]")
  if num_classes == 0 and labels is not None:
    raise ValueError(f"{module} has num_classes=0 and takes no labels; set num_classes to condition it")
  if labels is not None and labels.shape != (batch,):
    raise ValueError(f"labels must have shape [N] = ({batch},), got {labels.shape}")


class Generator(nn.Module):
  """Latent vector or feature map -> images, by ``len(features)`` stride-2 up-sampling blocks.

  Input ``z_or_features``: a latent ``[N, Z]`` (or features ``[N, F]``), projected by Dense (``"project"``) to
  ``[N, *base_shape, base_features]``, batch-normed and activated; or a feature map
  ``[N, h, w, C]`` fed straight into the first block (``base_shape`` unused). Block ``i``
  (``"up{i}"``, ``features[i - 1]`` channels) doubles H and W, then batch norm
  (``"bn{i}"``, if ``batch_norm``) and ``activation``; a layer ``"out"`` maps to ``out_channels``
  and ``output_activation`` follows. ``"out"`` has stride ``out_strides``: 1, or 2 for an output
  layer that up-samples too, in the variant's way (Radford et al.'s DCGAN, whose last transposed
  conv makes the image). Output ``[N, h * 2**L, w * 2**L, out_channels]``, ``L = len(features)``
  plus one if ``out_strides`` is 2; ``output_hw``, when given, is checked against it.

  ``upsample`` (Odena, Dumoulin & Olah, "Deconvolution and Checkerboard Artifacts", 2016):

  * ``"transpose"``: `Deconv`, stride 2, ``kernel_size`` (4 overlaps evenly with stride 2,
    3 and 5 do not: checkerboard); ``"out"`` is a stride-1 `Deconv`.
  * ``"resize_conv"``: ``ops.resize`` by 2 (``resize_method``), then a stride-1 `Conv`.
  * ``"subpixel"``: a stride-1 `Conv` to ``4 * features[i]`` channels, then ``ops.depth_to_space(., 2)``.

  With ``num_classes > 0`` the integer labels ``[N]`` are one-hot encoded and concatenated to
  ``z`` (to a feature map as constant channels). Concatenating a one-hot to the Dense input is
  the same as adding a learned per-class embedding to the projection. Layers followed by batch
  norm have no bias. ``bn_axis_name`` names the pmap/vmap axis over which batch statistics are averaged.

  ``Generator(features=(32, 16), kernel_size=4, output_activation="sigmoid", batch_norm=False)``
  on a ``[N, 7, 7, C]`` map is the Keras example's stack: Conv2DTranspose 32, 16 (4x4, stride 2)
  and 1 (4x4, stride 1), all ``"same"``, ReLU, sigmoid output -> ``[N, 28, 28, 1]``.
  """

  features: Sequence[int] = (64, 32)
  base_shape: Sequence[int] = (7, 7)
  base_features: int = 128
  output_hw: Sequence[int] | None = None
  upsample: str = "transpose"
  resize_method: str = "nearest"
  kernel_size: ops.IntOrPair = 4
  batch_norm: bool = True
  bn_axis_name: str | None = None
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  output_activation: str = "tanh"
  out_channels: int = 1
  out_strides: int = 1
  num_classes: int = 0

  @nn.compact
  def __call__(self, z_or_features: jax.Array, labels: jax.Array | None = None, *, train: bool = False) -> jax.Array:
    """z ``[N, Z]`` or features ``[N, h, w, C]`` (+ labels ``[N]``) -> images ``[N, H, W, out_channels]``."""
    if self.upsample not in UPSAMPLERS:
      raise ValueError(f"upsample must be one of {tuple(UPSAMPLERS)}, got {self.upsample!r}")
    out_act = _output_activation(self.output_activation)
    x = z_or_features
    if x.ndim not in (2, 4):
      raise ValueError(f"z_or_features must be a latent [N, Z] or a feature map [N, h, w, C], got shape {x.shape}")
    _check_labels(labels, self.num_classes, x.shape[0], "Generator")
    if self.out_strides not in (1, 2):
      raise ValueError(f"out_strides must be 1 or 2, got {self.out_strides!r}")
    base_hw = ops.as_pair(self.base_shape, "base_shape") if x.ndim == 2 else x.shape[1:3]
    doublings = len(self.features) + (self.out_strides == 2)
    scale = 2**doublings
    out_hw = (base_hw[0] * scale, base_hw[1] * scale)
    if self.output_hw is not None and out_hw != ops.as_pair(self.output_hw, "output_hw"):
      source = "base_shape" if x.ndim == 2 else "the input feature map's (h, w)"
      raise ValueError(
        f"Generator: {source} {tuple(base_hw)} doubled by {doublings} blocks gives {out_hw}, not "
        f"output_hw {tuple(self.output_hw)}; output_hw must be {source} * {scale}"
      )
    norm = lambda name: nn.BatchNorm(use_running_average=not train, axis_name=self.bn_axis_name, name=name)
    if labels is not None:
      onehot = jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype)
      if x.ndim == 4:
        onehot = jnp.broadcast_to(onehot[:, None, None, :], (*x.shape[:3], self.num_classes))
      x = jnp.concatenate([x, onehot], axis=-1)
    if x.ndim == 2:
      x = nn.Dense(base_hw[0] * base_hw[1] * self.base_features, use_bias=not self.batch_norm, name="project")(x)
      x = x.reshape(x.shape[0], *base_hw, self.base_features)
      x = self.activation(norm("bn0")(x) if self.batch_norm else x)
    for i, width in enumerate(self.features, start=1):
      x = self._upsample(x, width, use_bias=not self.batch_norm, name=f"up{i}")
      x = self.activation(norm(f"bn{i}")(x) if self.batch_norm else x)
    if self.out_strides == 2:
      x = self._upsample(x, self.out_channels, use_bias=True, name="out")
    else:
      x = UPSAMPLERS[self.upsample].same_size(self.out_channels, self.kernel_size, strides=1, name="out")(x)
    return out_act(x)

  def _upsample(self, x: jax.Array, width: int, *, use_bias: bool, name: str) -> jax.Array:
    """One stride-2 up-sampling layer of ``width`` channels, as ``upsample`` says."""
    return UPSAMPLERS[self.upsample].double(self, x, width, use_bias=use_bias, name=name)


class Upsampler(NamedTuple):
  """One way for `Generator` to double H and W: ``double(generator, x, width, *, use_bias, name)`` builds a
  stride-2 layer of ``width`` channels (named ``name``) and applies it to ``x``; ``same_size`` is the layer
  class of the generator's stride-1 output layer (``"out"``), `Deconv` or `Conv`, called as
  ``same_size(out_channels, kernel_size, strides=1, name="out")``."""

  double: Callable[..., jax.Array]
  same_size: type[nn.Module]


def _transpose(g: Generator, x: jax.Array, width: int, *, use_bias: bool, name: str) -> jax.Array:
  return Deconv(width, g.kernel_size, strides=2, use_bias=use_bias, name=name)(x)


def _resize_conv(g: Generator, x: jax.Array, width: int, *, use_bias: bool, name: str) -> jax.Array:
  return Conv(width, g.kernel_size, use_bias=use_bias, name=name)(ops.resize(x, 2, g.resize_method))


def _subpixel(g: Generator, x: jax.Array, width: int, *, use_bias: bool, name: str) -> jax.Array:
  return ops.depth_to_space(Conv(4 * width, g.kernel_size, use_bias=use_bias, name=name)(x), 2)


# Generator.upsample's values. A new up-sampler is one entry here (its config value comes from this table).
UPSAMPLERS: dict[str, Upsampler] = {
  "transpose": Upsampler(_transpose, Deconv),
  "resize_conv": Upsampler(_resize_conv, Conv),
  "subpixel": Upsampler(_subpixel, Conv),
}


class Discriminator(nn.Module):
  """Images ``[N, H, W, C]`` (+ labels ``[N]``) -> one logit per image ``[N]``.

  ``len(features)`` x [stride-2 `Conv` ``"conv{i}"``, LeakyReLU(``negative_slope``)], flatten to
  ``h [N, F]``, Dense ``"head"`` to the logit. With ``num_classes > 0`` it is a *projection*
  discriminator (Miyato & Koyama, 2018): ``logit = head(h) + <embed(y), h>`` with a learned
  class embedding ``"embed"`` ``[num_classes, F]`` (F depends on the image size).
  """

  features: Sequence[int] = (64, 128)
  kernel_size: ops.IntOrPair = 4
  negative_slope: float = 0.2
  num_classes: int = 0

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """images ``[N, H, W, C]``, labels ``[N]`` int (iff ``num_classes > 0``) -> logits ``[N]``."""
    if images.ndim != 4:
      raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
    _check_labels(labels, self.num_classes, images.shape[0], "Discriminator")
    x = images
    for i, width in enumerate(self.features, start=1):
      x = nn.leaky_relu(Conv(width, self.kernel_size, strides=2, name=f"conv{i}")(x), self.negative_slope)
    h = x.reshape(x.shape[0], -1)  # [N, F]
    logits = nn.Dense(1, name="head")(h)[:, 0]
    if labels is not None:
      logits = logits + jnp.sum(nn.Embed(self.num_classes, h.shape[-1], name="embed")(labels) * h, axis=-1)
    return logits


class Encoder(nn.Module):
  """Images ``[N, H, W, C]`` -> code: ``len(features)`` x [`Conv` ``"conv{i}"`` (``strides``), activation].

  The code is the last map ``[N, h, w, features[-1]]``, or with ``latent_dim > 0`` a linear Dense
  bottleneck ``"bottleneck"`` of it: ``[N, latent_dim]``. ``linear=True`` drops every bias and
  activation: the encoder's linear part, whose adjoint is the tied decoder's (`Autoencoder`).
  """

  features: Sequence[int] = (32, 64)
  kernel_size: ops.IntOrPair = 4
  strides: ops.IntOrPair = 2
  padding: ops.Padding = "SAME"
  latent_dim: int = 0
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  def shapes(self, image_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """``[(H, W, C), (H1, W1, features[0]), ...]``: layer ``i``'s input is entry ``i - 1``, its output entry ``i``."""
    h, w, c = image_shape
    out = [(h, w, c)]
    for width in self.features:
      kernel_hw = ops.as_pair(self.kernel_size, "kernel_size")
      h, w = ops.conv_output_shape((h, w), kernel_hw, strides=self.strides, padding=self.padding)
      out.append((h, w, width))
    return out

  @nn.compact
  def __call__(self, x_NHWC: jax.Array, *, linear: bool = False) -> jax.Array:
    """x ``[N, H, W, C]`` -> ``[N, h, w, features[-1]]``, or ``[N, latent_dim]`` with a bottleneck."""
    x = x_NHWC
    for i, width in enumerate(self.features, start=1):
      x = Conv(width, self.kernel_size, self.strides, self.padding, use_bias=not linear, name=f"conv{i}")(x)
      x = x if linear else self.activation(x)
    if self.latent_dim > 0:
      x = nn.Dense(self.latent_dim, use_bias=not linear, name="bottleneck")(x.reshape(x.shape[0], -1))
    return x


class Decoder(nn.Module):
  """The mirror image of an `Encoder`: code -> images ``[N, *image_shape]``, layers in reverse order.

  ``encoder_shapes`` is ``Encoder.shapes(image_shape)``. Layer ``i`` (mirroring encoder layer ``i``)
  maps ``encoder_shapes[i]`` back to ``encoder_shapes[i - 1]``; every layer but the last is followed
  by ``activation``, the last by ``output_activation``. With a bottleneck the code ``[N, latent_dim]``
  first goes through a Dense back to the encoder's last map (then ``activation``).

  * free (``encoder_params=None``): layer ``i`` is a `Deconv` ``"deconv{i}"`` whose kernel has the
    same shape as encoder conv ``i``'s; the Dense is ``"dense"``.
  * tied (``encoder_params`` = the encoder's params): layer ``i`` is
    ``ops.deconv2d(h, encoder conv{i} kernel, same strides/padding, input_shape=encoder layer i's input)``
    plus its own bias ``"bias{i}"``; the Dense is ``h @ bottleneck_kernel.T + "dense_bias"``.

  ``linear=True`` drops biases and activations. Tied, that linear part is the exact adjoint of
  ``Encoder(..., linear=True)``: ``<encoder_linear(x), y> == <x, decoder_linear(y)>``.
  """

  encoder_shapes: Sequence[tuple[int, int, int]]
  kernel_size: ops.IntOrPair = 4
  strides: ops.IntOrPair = 2
  padding: ops.Padding = "SAME"
  latent_dim: int = 0
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  output_activation: str = "sigmoid"

  @nn.compact
  def __call__(self, code: jax.Array, encoder_params: Any = None, *, linear: bool = False) -> jax.Array:
    """code ``[N, h, w, C]`` or ``[N, latent_dim]`` -> ``[N, H, W, C_image]``."""
    out_act = _output_activation(self.output_activation)
    shapes = [tuple(s) for s in self.encoder_shapes]
    n_layers = len(shapes) - 1
    tied = encoder_params is not None
    h = code
    if self.latent_dim > 0:
      if code.shape[1:] != (self.latent_dim,):
        raise ValueError(f"code must be [N, latent_dim] = [N, {self.latent_dim}], got shape {code.shape}")
      flat = shapes[-1][0] * shapes[-1][1] * shapes[-1][2]
      if tied:
        h = h @ encoder_params["bottleneck"]["kernel"].T
        h = h if linear else h + self.param("dense_bias", nn.initializers.zeros, (flat,))
      else:
        h = nn.Dense(flat, use_bias=not linear, name="dense")(h)
      h = h.reshape(h.shape[0], *shapes[-1])
      h = h if linear else self.activation(h)
    elif code.shape[1:] != shapes[-1]:
      raise ValueError(f"code must be [N, h, w, C] = [N, {', '.join(map(str, shapes[-1]))}], got shape {code.shape}")
    for i in range(n_layers, 0, -1):
      in_h, in_w, in_c = shapes[i - 1]
      if tied:
        kernel = encoder_params[f"conv{i}"]["kernel"]
        h = ops.deconv2d(h, kernel, strides=self.strides, padding=self.padding, input_shape=(in_h, in_w))
        h = h if linear else h + self.param(f"bias{i}", nn.initializers.zeros, (in_c,))
      else:
        layer = Deconv(in_c, self.kernel_size, self.strides, self.padding, use_bias=not linear, name=f"deconv{i}")
        h = layer(h, output_shape=(in_h, in_w))
      if not linear:
        h = out_act(h) if i == 1 else self.activation(h)
    return h


class Autoencoder(nn.Module):
  """`Encoder` + `Decoder` on images ``[N, *image_shape]``; ``tied=True`` makes the decoder the encoder's adjoint.

  Tied, the decoder owns biases only: its layer ``i`` is ``deconv2d`` with encoder conv ``i``'s kernel
  (and the transposed bottleneck kernel), so the decoder's linear part is exactly the adjoint of the
  encoder's. ``encode`` / ``decode`` take ``linear=True`` to drop biases and activations; e.g.
  ``model.apply(variables, code, method=Autoencoder.decode, linear=True)``.
  Params: ``{"encoder": {"conv1", ..., "bottleneck"}, "decoder": {...}}`` (see `Decoder`).
  """

  image_shape: Sequence[int] = (28, 28, 1)
  features: Sequence[int] = (32, 64)
  kernel_size: ops.IntOrPair = 4
  strides: ops.IntOrPair = 2
  padding: ops.Padding = "SAME"
  latent_dim: int = 0
  tied: bool = False
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  output_activation: str = "sigmoid"

  def setup(self):
    if len(self.image_shape) != 3:
      raise ValueError(f"image_shape must be (H, W, C), got {self.image_shape!r}")
    self.encoder = Encoder(
      self.features, self.kernel_size, self.strides, self.padding, self.latent_dim, self.activation
    )
    self.decoder = Decoder(
      tuple(self.encoder.shapes(self.image_shape)),
      self.kernel_size,
      self.strides,
      self.padding,
      self.latent_dim,
      self.activation,
      self.output_activation,
    )

  def encode(self, images: jax.Array, *, linear: bool = False) -> jax.Array:
    """images ``[N, *image_shape]`` -> code ``[N, h, w, features[-1]]`` or ``[N, latent_dim]``."""
    if images.shape[1:] != tuple(self.image_shape):
      raise ValueError(
        f"images must be [N, *image_shape] = [N, {', '.join(map(str, self.image_shape))}], got {images.shape}"
      )
    return self.encoder(images, linear=linear)

  def decode(self, code: jax.Array, *, linear: bool = False) -> jax.Array:
    """code -> reconstructions ``[N, *image_shape]``."""
    return self.decoder(code, self.encoder.variables["params"] if self.tied else None, linear=linear)

  def __call__(self, images: jax.Array) -> jax.Array:
    """images ``[N, *image_shape]`` -> reconstructions, same shape."""
    return self.decode(self.encode(images))
