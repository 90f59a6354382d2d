"""Networks to compare the attribution with captum on: each in PyTorch and three JAX forms, one set of weights.

A comparison with captum is only as good as the networks it runs on, so each is written the way its authors write
it, not the way that happens to suit `attribution`: PyTorch with ``nn.ReLU`` modules (what captum's Deconvolution and
GuidedBackprop hook), torchvision's ResNet with one in-place ReLU module called twice per block, a network whose ReLUs
are functional calls (which captum cannot see); and in JAX a Flax Linen module calling ``nn.relu`` inline, a Flax
NNX module, and a plain function of ``(weights, x)`` in ``jax.lax`` and ``jax.numpy`` alone. The networks:

* ``cnn``: the project's `models.CNN` (Conv-ReLU-MaxPool twice, Dense-ReLU, Dense); its own module is a fourth form;
* ``resnet18``: ResNet-18's structure at tiny widths (7x7 stride-2 stem, BatchNorm in eval mode with running
  statistics that are not the identity, 3x3 stride-2 max pooling padded with -inf, four stages of two BasicBlocks
  with 1x1 stride-2 downsampling, global average pooling);
* ``vgg``: torchvision's VGG layout (conv-ReLU blocks, max pooling, Linear-ReLU-Dropout twice, Linear);
* ``functional_relu`` and ``relu_modules``: one network whose PyTorch forms differ only in how their ReLUs are
  written (``F.relu`` and ``torch.relu`` in ``forward``, or ``nn.ReLU`` modules); their JAX forms are the same.

The weights (`make_weights`) are a dict ``{layer: {param: array}}`` of numpy arrays in the JAX layout: HWIO conv
kernels, ``[in, out]`` dense kernels whose rows, after a flattened feature map, are in NHWC order (JAX's
``x.reshape(n, -1)``), BatchNorm as ``scale, bias, mean, var``. `torch_state` converts them to each PyTorch module's
``state_dict`` (OIHW kernels, ``[out, in]`` linear weights, NCHW flattening order). Layers are named as the PyTorch
module names them (``layer2.0.downsample.1``); `Network.path` gives the Linen and NNX modules' path for that name.

Only the PyTorch forms need torch: without it the module imports and the JAX forms work.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from deconv_jax import models

try:
  import torch
  import torch.nn.functional as F
  from torch import nn as tnn
except ImportError:  # the environment without the `reference` extra: the JAX forms alone
  torch = F = tnn = None

# The classes below are defined whether or not torch is there; only building one needs it.
_TorchModule: Any = tnn.Module if tnn is not None else object

Weights = dict[str, dict[str, np.ndarray]]
BN_EPS = 1e-5  # PyTorch's BatchNorm2d default, given to Flax's explicitly

# ---------------------------------------------------------------- plain JAX: lax and jnp only

_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, p, stride=1, padding=0):
  y = lax.conv_general_dilated(
    x, p["kernel"], (stride, stride), ((padding, padding), (padding, padding)), None, None, _NHWC
  )
  return y + p["bias"] if "bias" in p else y


def _dense(x, p):
  return x @ p["kernel"] + p["bias"]


def _batch_norm(x, p):
  # Flax's order of operations, ``(x - mean) * (rsqrt(var + eps) * scale) + bias``: the same value as PyTorch's
  # ``(x - mean) / sqrt(var + eps) * weight + bias`` to rounding, and Flax's to the bit, so the JAX forms agree exactly.
  return (x - p["mean"]) * (lax.rsqrt(p["var"] + BN_EPS) * p["scale"]) + p["bias"]


def _max_pool(x, window, stride, padding=0):
  # -inf padding, as PyTorch's max_pool2d pads: a padded position never wins a window, even after a ReLU.
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


# ---------------------------------------------------------------- the networks' description


@dataclasses.dataclass(frozen=True)
class Network:
  """One network: its input, its layers' shapes, and how each form is built."""

  name: str
  image_shape: tuple[int, int, int]  # H, W, C
  num_classes: int
  # layer name -> ("conv", kh, kw, cin, cout, has_bias) | ("bn", channels) | ("dense", fan_in, fan_out)
  layers: dict[str, tuple]
  torch: Callable[[], Any]  # the nn.Module class
  linen: Callable[[], nn.Module]
  nnx: Callable[[nnx.Rngs], nnx.Module]
  plain: Callable[[Any, jax.Array], jax.Array]
  # dense layer after a flattened feature map -> that map's (H, W, C): PyTorch flattens it in NCHW order
  flatten: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)
  path: Callable[[str], tuple[str, ...]] = lambda name: (name,)  # Linen and NNX path of a layer
  project: Callable[[], nn.Module] | None = None  # a Linen module of the project on the same variables

  def __repr__(self) -> str:
    return self.name


def make_weights(net: Network, seed: int = 0) -> Weights:
  """Random weights of ``net`` from ``seed``, in the JAX layout.

  He-normal kernels keep the activations of a deep stack at a useful scale. The conv biases and BatchNorm shifts are
  drawn mostly negative, so that many ReLUs are inactive and whole max-pooling windows are zero: those windows tie,
  and the deconvnet's result depends on which of their positions the pooling's VJP picks. The BatchNorm running
  statistics are far from (0, 1), so that a form that ignored one of them would not agree.
  """
  rng = np.random.default_rng(seed)
  weights = {}
  for name, (kind, *shape) in net.layers.items():
    if kind == "conv":
      kh, kw, cin, cout, bias = shape
      p = {"kernel": rng.normal(0, np.sqrt(2 / (kh * kw * cin)), (kh, kw, cin, cout))}
      if bias:
        p["bias"] = rng.uniform(-0.3, 0.1, cout)
    elif kind == "bn":
      (c,) = shape
      p = {
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": rng.uniform(-0.3, 0.2, c),
        "mean": rng.normal(0, 0.3, c),
        "var": rng.uniform(0.5, 2.0, c),
      }
    elif kind == "dense":
      fan_in, fan_out = shape
      p = {"kernel": rng.normal(0, np.sqrt(2 / fan_in), (fan_in, fan_out)), "bias": rng.normal(0, 0.1, fan_out)}
    else:
      raise ValueError(f"unknown layer kind {kind!r}")
    weights[name] = {k: v.astype(np.float32) for k, v in p.items()}
  return weights


def images(net: Network, n: int, seed: int = 0) -> np.ndarray:
  """``[n, H, W, C]`` uniform in [0, 1): continuous, so no two positive activations tie by accident."""
  return np.random.default_rng(seed).uniform(0, 1, (n, *net.image_shape)).astype(np.float32)


# ---------------------------------------------------------------- building each form


def torch_state(net: Network, weights: Weights) -> dict[str, Any]:
  """``weights`` as the ``state_dict`` of ``net.torch()``."""
  state = {}
  for name, p in weights.items():
    kind = net.layers[name][0]
    if kind == "conv":
      state[f"{name}.weight"] = p["kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
    elif kind == "dense":
      kernel = p["kernel"]
      if name in net.flatten:  # rows in NHWC order -> PyTorch's NCHW order
        h, w, c = net.flatten[name]
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
      state[f"{name}.weight"] = kernel.T
    else:
      state[f"{name}.weight"] = p["scale"]
      state[f"{name}.running_mean"], state[f"{name}.running_var"] = p["mean"], p["var"]
      state[f"{name}.num_batches_tracked"] = np.array(0)
    if "bias" in p:
      state[f"{name}.bias"] = p["bias"]
  return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def torch_model(net: Network, weights: Weights):
  """``net``'s PyTorch module on ``weights``, in eval mode (BatchNorm's running statistics, no dropout)."""
  model = net.torch()
  model.load_state_dict(torch_state(net, weights))  # strict: every parameter and buffer is set
  return model.eval()


def linen_variables(net: Network, weights: Weights) -> dict[str, Any]:
  variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
  for name, p in weights.items():
    *parents, leaf = net.path(name)
    for collection, keys in (("params", ("kernel", "bias", "scale")), ("batch_stats", ("mean", "var"))):
      held = {k: jnp.asarray(v) for k, v in p.items() if k in keys}
      if held:
        functools.reduce(lambda d, k: d.setdefault(k, {}), parents, variables[collection])[leaf] = held
  return variables if variables["batch_stats"] else {"params": variables["params"]}


def nnx_model(net: Network, weights: Weights) -> nnx.Module:
  model = net.nnx(nnx.Rngs(0))
  for name, p in weights.items():
    layer = functools.reduce(getattr, net.path(name), model)
    for key, value in p.items():
      variable = getattr(layer, key)
      assert variable.shape == value.shape, (name, key, variable.shape, value.shape)
      variable[...] = jnp.asarray(value)
  return model


def jax_forms(net: Network, weights: Weights) -> dict[str, Callable[[jax.Array], jax.Array]]:
  """``{form: images [N, H, W, C] -> logits [N, K]}`` for the Linen, NNX and plain forms (and the project's)."""
  variables = linen_variables(net, weights)
  forms = {
    "linen": functools.partial(net.linen().apply, variables),
    "nnx": nnx_model(net, weights),
    "plain": functools.partial(net.plain, jax.tree.map(jnp.asarray, weights)),
  }
  if net.project is not None:
    forms["project"] = functools.partial(net.project().apply, variables)
  return forms


# ---------------------------------------------------------------- a. the project's CNN

CNN_FEATURES, CNN_DENSE, CNN_CLASSES = (4, 6), 8, 5  # on 16x16x3: 14 -> 7 -> 5 -> 2, flattened 2 * 2 * 6


class TorchCNN(_TorchModule):
  def __init__(self):
    super().__init__()
    (c1, c2), classes = CNN_FEATURES, CNN_CLASSES
    self.conv1 = tnn.Conv2d(3, c1, 3)
    self.relu1 = tnn.ReLU()
    self.conv2 = tnn.Conv2d(c1, c2, 3)
    self.relu2 = tnn.ReLU()
    self.pool = tnn.MaxPool2d(2)
    self.dense1 = tnn.Linear(2 * 2 * c2, CNN_DENSE)
    self.relu3 = tnn.ReLU()
    self.head = tnn.Linear(CNN_DENSE, classes)

  def forward(self, x):
    x = self.pool(self.relu1(self.conv1(x)))
    x = self.pool(self.relu2(self.conv2(x)))
    x = torch.flatten(x, 1)
    return self.head(self.relu3(self.dense1(x)))


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(CNN_FEATURES, start=1):
      x = nn.relu(nn.Conv(width, (3, 3), padding="VALID", name=f"conv{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(CNN_DENSE, name="dense1")(x))
    return nn.Dense(CNN_CLASSES, name="head")(x)


class NnxCNN(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    c1, c2 = CNN_FEATURES
    self.conv1 = nnx.Conv(3, c1, (3, 3), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (3, 3), padding="VALID", rngs=rngs)
    self.dense1 = nnx.Linear(2 * 2 * c2, CNN_DENSE, rngs=rngs)
    self.head = nnx.Linear(CNN_DENSE, CNN_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.head(nnx.relu(self.dense1(x)))


def plain_cnn(w, x):
  for name in ("conv1", "conv2"):
    x = _max_pool(jnp.maximum(_conv(x, w[name]), 0), 2, 2)
  x = x.reshape(x.shape[0], -1)
  return _dense(jnp.maximum(_dense(x, w["dense1"]), 0), w["head"])


CNN = Network(
  name="cnn",
  image_shape=(16, 16, 3),
  num_classes=CNN_CLASSES,
  layers={
    "conv1": ("conv", 3, 3, 3, CNN_FEATURES[0], True),
    "conv2": ("conv", 3, 3, CNN_FEATURES[0], CNN_FEATURES[1], True),
    "dense1": ("dense", 2 * 2 * CNN_FEATURES[1], CNN_DENSE),
    "head": ("dense", CNN_DENSE, CNN_CLASSES),
  },
  flatten={"dense1": (2, 2, CNN_FEATURES[1])},
  torch=TorchCNN,
  linen=LinenCNN,
  nnx=NnxCNN,
  plain=plain_cnn,
  # ops.max_pool's custom JVP (first maximum per window) in place of reduce_window's
  project=lambda: models.CNN(features=CNN_FEATURES, dense=(CNN_DENSE,), num_classes=CNN_CLASSES),
)

# ---------------------------------------------------------------- b. ResNet-18's structure

RESNET_WIDTHS, RESNET_CLASSES = (4, 8, 8, 16), 5  # on 32x32x3: stem 16, pool 8, stages 8 -> 4 -> 2 -> 1


def _resnet_blocks():
  """``(prefix, in_planes, planes, stride, downsample)`` of the eight BasicBlocks, as torchvision's _make_layer."""
  blocks, inplanes = [], RESNET_WIDTHS[0]
  for stage, planes in enumerate(RESNET_WIDTHS, start=1):
    stride = 1 if stage == 1 else 2
    for j in range(2):
      s = stride if j == 0 else 1
      blocks.append((f"layer{stage}.{j}", inplanes, planes, s, s != 1 or inplanes != planes))
      inplanes = planes
  return blocks


def _resnet_layers():
  layers = {"conv1": ("conv", 7, 7, 3, RESNET_WIDTHS[0], False), "bn1": ("bn", RESNET_WIDTHS[0])}
  for prefix, inplanes, planes, _, downsample in _resnet_blocks():
    layers[f"{prefix}.conv1"] = ("conv", 3, 3, inplanes, planes, False)
    layers[f"{prefix}.bn1"] = ("bn", planes)
    layers[f"{prefix}.conv2"] = ("conv", 3, 3, planes, planes, False)
    layers[f"{prefix}.bn2"] = ("bn", planes)
    if downsample:
      layers[f"{prefix}.downsample.0"] = ("conv", 1, 1, inplanes, planes, False)
      layers[f"{prefix}.downsample.1"] = ("bn", planes)
  layers["fc"] = ("dense", RESNET_WIDTHS[-1], RESNET_CLASSES)
  return layers


def _resnet_path(name: str) -> tuple[str, ...]:
  """``layer2.0.downsample.1`` -> ``("layer2_0", "downsample_bn")``: the Linen and NNX names."""
  name = name.replace("downsample.0", "downsample_conv").replace("downsample.1", "downsample_bn")
  parts = name.split(".")
  return (f"{parts[0]}_{parts[1]}", *parts[2:]) if parts[0].startswith("layer") else tuple(parts)


class TorchBasicBlock(_TorchModule):
  """torchvision's BasicBlock: one in-place ReLU module, called after bn1 and after the residual add."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.relu = tnn.ReLU(inplace=True)
    self.conv2 = tnn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x):
    identity = x
    out = self.conv1(x)
    out = self.bn1(out)
    out = self.relu(out)
    out = self.conv2(out)
    out = self.bn2(out)
    if self.downsample is not None:
      identity = self.downsample(x)
    out += identity
    out = self.relu(out)
    return out


class TorchResNet18(_TorchModule):
  def __init__(self):
    super().__init__()
    self.inplanes = RESNET_WIDTHS[0]
    self.conv1 = tnn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = tnn.BatchNorm2d(self.inplanes)
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(RESNET_WIDTHS[0], 2)
    self.layer2 = self._make_layer(RESNET_WIDTHS[1], 2, stride=2)
    self.layer3 = self._make_layer(RESNET_WIDTHS[2], 2, stride=2)
    self.layer4 = self._make_layer(RESNET_WIDTHS[3], 2, stride=2)
    self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
    self.fc = tnn.Linear(RESNET_WIDTHS[3], RESNET_CLASSES)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = tnn.Sequential(
        tnn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False), tnn.BatchNorm2d(planes)
      )
    layers = [TorchBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [TorchBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
    return tnn.Sequential(*layers)

  def forward(self, x):
    x = self.conv1(x)
    x = self.bn1(x)
    x = self.relu(x)
    x = self.maxpool(x)
    x = self.layer1(x)
    x = self.layer2(x)
    x = self.layer3(x)
    x = self.layer4(x)
    x = self.avgpool(x)
    x = torch.flatten(x, 1)
    return self.fc(x)


def _linen_bn(name):
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


class LinenBasicBlock(nn.Module):
  planes: int
  strides: int = 1
  downsample: bool = False

  @nn.compact
  def __call__(self, x):
    identity = x
    out = nn.Conv(self.planes, (3, 3), self.strides, padding=1, use_bias=False, name="conv1")(x)
    out = nn.relu(_linen_bn("bn1")(out))
    out = nn.Conv(self.planes, (3, 3), padding=1, use_bias=False, name="conv2")(out)
    out = _linen_bn("bn2")(out)
    if self.downsample:
      identity = nn.Conv(self.planes, (1, 1), self.strides, padding=0, use_bias=False, name="downsample_conv")(x)
      identity = _linen_bn("downsample_bn")(identity)
    return nn.relu(out + identity)


class LinenResNet18(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(RESNET_WIDTHS[0], (7, 7), 2, padding=3, use_bias=False, name="conv1")(x)
    x = nn.relu(_linen_bn("bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for prefix, _, planes, stride, downsample in _resnet_blocks():
      x = LinenBasicBlock(planes, stride, downsample, name=prefix.replace(".", "_"))(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(RESNET_CLASSES, name="fc")(x)


def _nnx_bn(planes, rngs):
  return nnx.BatchNorm(planes, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


class NnxBasicBlock(nnx.Module):
  def __init__(self, inplanes, planes, stride, downsample, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(inplanes, planes, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs)
    self.bn1 = _nnx_bn(planes, rngs)
    self.conv2 = nnx.Conv(planes, planes, (3, 3), padding=1, use_bias=False, rngs=rngs)
    self.bn2 = _nnx_bn(planes, rngs)
    if downsample:
      self.downsample_conv = nnx.Conv(inplanes, planes, (1, 1), strides=stride, padding=0, use_bias=False, rngs=rngs)
      self.downsample_bn = _nnx_bn(planes, rngs)
    else:  # not assigned None first: NNX would make the attribute static, and a module then cannot go there
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x):
    identity = x
    out = nnx.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample_conv is not None:
      identity = self.downsample_bn(self.downsample_conv(x))
    return nnx.relu(out + identity)


class NnxResNet18(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, RESNET_WIDTHS[0], (7, 7), strides=2, padding=3, use_bias=False, rngs=rngs)
    self.bn1 = _nnx_bn(RESNET_WIDTHS[0], rngs)
    for prefix, inplanes, planes, stride, downsample in _resnet_blocks():
      setattr(self, prefix.replace(".", "_"), NnxBasicBlock(inplanes, planes, stride, downsample, rngs=rngs))
    self.blocks = tuple(prefix.replace(".", "_") for prefix, *_ in _resnet_blocks())  # a tuple of names: static
    self.fc = nnx.Linear(RESNET_WIDTHS[-1], RESNET_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name in self.blocks:
      x = getattr(self, name)(x)
    return self.fc(jnp.mean(x, axis=(1, 2)))


def plain_resnet18(w, x):
  x = jnp.maximum(_batch_norm(_conv(x, w["conv1"], 2, 3), w["bn1"]), 0)
  x = _max_pool(x, 3, 2, 1)
  for prefix, _, _, stride, downsample in _resnet_blocks():
    out = jnp.maximum(_batch_norm(_conv(x, w[f"{prefix}.conv1"], stride, 1), w[f"{prefix}.bn1"]), 0)
    out = _batch_norm(_conv(out, w[f"{prefix}.conv2"], 1, 1), w[f"{prefix}.bn2"])
    if downsample:
      x = _batch_norm(_conv(x, w[f"{prefix}.downsample.0"], stride), w[f"{prefix}.downsample.1"])
    x = jnp.maximum(out + x, 0)
  return _dense(jnp.mean(x, axis=(1, 2)), w["fc"])


RESNET18 = Network(
  name="resnet18",
  image_shape=(32, 32, 3),
  num_classes=RESNET_CLASSES,
  layers=_resnet_layers(),
  torch=TorchResNet18,
  linen=LinenResNet18,
  nnx=NnxResNet18,
  plain=plain_resnet18,
  path=_resnet_path,
)

# ---------------------------------------------------------------- c. VGG

VGG_CFG, VGG_HIDDEN, VGG_CLASSES = (4, "M", 8, 8, "M", 8, "M"), 16, 5  # on 16x16x3: 8 -> 4 -> 2, flattened 2 * 2 * 8
_VGG_FLAT = 2 * 2 * VGG_CFG[-2]


def _vgg_convs():
  """``(index in features, in_channels, out_channels)`` of each conv, numbered as torchvision's make_layers."""
  convs, index, channels = [], 0, 3
  for v in VGG_CFG:
    if v == "M":
      index += 1
    else:
      convs.append((index, channels, v))
      index, channels = index + 2, v
  return convs


class TorchVGG(_TorchModule):
  def __init__(self):
    super().__init__()
    layers, channels = [], 3
    for v in VGG_CFG:
      if v == "M":
        layers += [tnn.MaxPool2d(kernel_size=2, stride=2)]
      else:
        layers += [tnn.Conv2d(channels, v, kernel_size=3, padding=1), tnn.ReLU(inplace=True)]
        channels = v
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Sequential(
      tnn.Linear(_VGG_FLAT, VGG_HIDDEN),
      tnn.ReLU(True),
      tnn.Dropout(),
      tnn.Linear(VGG_HIDDEN, VGG_HIDDEN),
      tnn.ReLU(True),
      tnn.Dropout(),
      tnn.Linear(VGG_HIDDEN, VGG_CLASSES),
    )

  def forward(self, x):
    x = self.features(x)
    x = torch.flatten(x, 1)
    return self.classifier(x)


class LinenVGG(nn.Module):
  @nn.compact
  def __call__(self, x):
    convs = iter(_vgg_convs())
    for v in VGG_CFG:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.relu(nn.Conv(v, (3, 3), padding=1, name=f"features_{next(convs)[0]}")(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.Dropout(0.5, deterministic=True)(nn.relu(nn.Dense(VGG_HIDDEN, name="classifier_0")(x)))
    x = nn.Dropout(0.5, deterministic=True)(nn.relu(nn.Dense(VGG_HIDDEN, name="classifier_3")(x)))
    return nn.Dense(VGG_CLASSES, name="classifier_6")(x)


class NnxVGG(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    for index, cin, cout in _vgg_convs():
      setattr(self, f"features_{index}", nnx.Conv(cin, cout, (3, 3), padding=1, rngs=rngs))
    self.convs = tuple(f"features_{index}" for index, _, _ in _vgg_convs())  # a tuple of names: static
    self.classifier_0 = nnx.Linear(_VGG_FLAT, VGG_HIDDEN, rngs=rngs)
    self.classifier_3 = nnx.Linear(VGG_HIDDEN, VGG_HIDDEN, rngs=rngs)
    self.classifier_6 = nnx.Linear(VGG_HIDDEN, VGG_CLASSES, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, deterministic=True)

  def __call__(self, x):
    convs = iter(self.convs)
    for v in VGG_CFG:
      if v == "M":
        x = nnx.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nnx.relu(getattr(self, next(convs))(x))
    x = x.reshape(x.shape[0], -1)
    x = self.dropout(nnx.relu(self.classifier_0(x)))
    x = self.dropout(nnx.relu(self.classifier_3(x)))
    return self.classifier_6(x)


def plain_vgg(w, x):
  convs = iter(_vgg_convs())
  for v in VGG_CFG:
    if v == "M":
      x = _max_pool(x, 2, 2)
    else:
      x = jnp.maximum(_conv(x, w[f"features.{next(convs)[0]}"], 1, 1), 0)
  x = x.reshape(x.shape[0], -1)
  x = jnp.maximum(_dense(x, w["classifier.0"]), 0)
  x = jnp.maximum(_dense(x, w["classifier.3"]), 0)
  return _dense(x, w["classifier.6"])


VGG = Network(
  name="vgg",
  image_shape=(16, 16, 3),
  num_classes=VGG_CLASSES,
  layers={
    **{f"features.{i}": ("conv", 3, 3, cin, cout, True) for i, cin, cout in _vgg_convs()},
    "classifier.0": ("dense", _VGG_FLAT, VGG_HIDDEN),
    "classifier.3": ("dense", VGG_HIDDEN, VGG_HIDDEN),
    "classifier.6": ("dense", VGG_HIDDEN, VGG_CLASSES),
  },
  flatten={"classifier.0": (2, 2, VGG_CFG[-2])},
  torch=TorchVGG,
  linen=LinenVGG,
  nnx=NnxVGG,
  plain=plain_vgg,
  path=lambda name: (name.replace(".", "_"),),
)

# ---------------------------------------------------------------- d. functional ReLUs, and the same as modules

SMALL_CLASSES = 5  # on 12x12x3: conv (padding 1) 12, pool 6, conv 4, pool 2, flattened 2 * 2 * 6


class TorchFunctionalReLU(_TorchModule):
  """ReLUs written as calls in ``forward``: no module for captum to hook."""

  def __init__(self):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 4, 3, padding=1)
    self.conv2 = tnn.Conv2d(4, 6, 3)
    self.fc1 = tnn.Linear(2 * 2 * 6, 8)
    self.fc2 = tnn.Linear(8, SMALL_CLASSES)

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.conv1(x)), 2)
    x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
    x = torch.flatten(x, 1)
    x = F.relu(self.fc1(x))
    return self.fc2(x)


class TorchReLUModules(TorchFunctionalReLU):
  """The same network, the same parameters, its ReLUs ``nn.ReLU`` modules."""

  def __init__(self):
    super().__init__()
    self.relu1, self.relu2, self.relu3 = tnn.ReLU(), tnn.ReLU(), tnn.ReLU()

  def forward(self, x):
    x = F.max_pool2d(self.relu1(self.conv1(x)), 2)
    x = F.max_pool2d(self.relu2(self.conv2(x)), 2)
    x = torch.flatten(x, 1)
    x = self.relu3(self.fc1(x))
    return self.fc2(x)


class LinenSmall(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.max_pool(nn.relu(nn.Conv(4, (3, 3), padding=1, name="conv1")(x)), (2, 2), strides=(2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(6, (3, 3), padding="VALID", name="conv2")(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(8, name="fc1")(x))
    return nn.Dense(SMALL_CLASSES, name="fc2")(x)


class NnxSmall(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
    self.conv2 = nnx.Conv(4, 6, (3, 3), padding="VALID", rngs=rngs)
    self.fc1 = nnx.Linear(2 * 2 * 6, 8, rngs=rngs)
    self.fc2 = nnx.Linear(8, SMALL_CLASSES, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.fc2(nnx.relu(self.fc1(x)))


def plain_small(w, x):
  x = _max_pool(jnp.maximum(_conv(x, w["conv1"], 1, 1), 0), 2, 2)
  x = _max_pool(jnp.maximum(0.0, _conv(x, w["conv2"])), 2, 2)  # the zero first: a ReLU in either order
  x = x.reshape(x.shape[0], -1)
  return _dense(jnp.maximum(_dense(x, w["fc1"]), 0), w["fc2"])


_SMALL = dict(
  image_shape=(12, 12, 3),
  num_classes=SMALL_CLASSES,
  layers={
    "conv1": ("conv", 3, 3, 3, 4, True),
    "conv2": ("conv", 3, 3, 4, 6, True),
    "fc1": ("dense", 2 * 2 * 6, 8),
    "fc2": ("dense", 8, SMALL_CLASSES),
  },
  flatten={"fc1": (2, 2, 6)},
  linen=LinenSmall,
  nnx=NnxSmall,
  plain=plain_small,
)
FUNCTIONAL_RELU = Network(name="functional_relu", torch=TorchFunctionalReLU, **_SMALL)
RELU_MODULES = Network(name="relu_modules", torch=TorchReLUModules, **_SMALL)

NETWORKS = (CNN, RESNET18, VGG, FUNCTIONAL_RELU, RELU_MODULES)
