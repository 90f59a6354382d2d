"""Modules: the CNN's shapes and named activations, and Deconv as the adjoint of Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import config as config_lib
from deconv_jax import models, ops


def test_default_cnn_is_the_classic_keras_network():
  model = models.cnn_from_config(config_lib.base().model, num_classes=10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  shapes = jax.tree.map(jnp.shape, variables["params"])
  assert shapes == {
    "conv1": {"kernel": (3, 3, 1, 32), "bias": (32,)},
    "conv2": {"kernel": (3, 3, 32, 64), "bias": (64,)},
    "conv3": {"kernel": (3, 3, 64, 128), "bias": (128,)},
    "dense1": {"kernel": (128, 512), "bias": (512,)},
    "head": {"kernel": (512, 10), "bias": (10,)},
  }
  acts = models.intermediates(model, variables, jnp.zeros((2, 28, 28, 1)))
  assert {k: v.shape for k, v in acts.items()} == {
    "act1": (2, 26, 26, 32),
    "pool1": (2, 13, 13, 32),
    "act2": (2, 11, 11, 64),
    "pool2": (2, 5, 5, 64),
    "act3": (2, 3, 3, 128),
    "pool3": (2, 1, 1, 128),
    "hidden1": (2, 512),
    "logits": (2, 10),
  }


@pytest.mark.parametrize(
  "shape,kwargs",
  [
    ((32, 32, 3), {}),
    ((32, 32, 3), {"padding": "SAME", "features": (16, 32), "dense": (64, 32), "kernel_size": 5}),
    ((20, 24, 2), {"pool": 1, "features": (4,), "dense": ()}),
  ],
)
def test_cnn_takes_any_image_shape(shape, kwargs):
  model = models.CNN(num_classes=7, **kwargs)
  x = jax.random.normal(jax.random.key(1), (3, *shape))
  variables = model.init(jax.random.key(0), x)
  logits = model.apply(variables, x)
  assert logits.shape == (3, 7)
  assert np.all(np.isfinite(logits))


def test_cnn_too_deep_for_its_input_raises():
  with pytest.raises(ValueError, match=r"does not fit|larger than"):
    models.CNN(features=(8,) * 5).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_activation_is_a_swappable_field():
  model = models.CNN(features=(4,), dense=(8,), num_classes=3)
  x = jax.random.normal(jax.random.key(1), (2, 10, 10, 1))
  variables = model.init(jax.random.key(0), x)
  relu_out = model.apply(variables, x)
  tanh_out = model.clone(activation=jnp.tanh).apply(variables, x)
  assert not np.allclose(relu_out, tanh_out)
  linear_out = model.clone(activation=lambda v: v).apply(variables, x)
  # With the identity activation the network is affine in x (pooling aside): check against a manual pass.
  p = variables["params"]
  h = ops.max_pool(ops.conv2d(x, p["conv1"]["kernel"], padding="VALID") + p["conv1"]["bias"], 2).reshape(2, -1)
  h = h @ p["dense1"]["kernel"] + p["dense1"]["bias"]
  np.testing.assert_allclose(linear_out, h @ p["head"]["kernel"] + p["head"]["bias"], rtol=1e-5, atol=1e-5)


def test_deconv_layer_is_deconv2d_of_its_kernel():
  layer = models.Deconv(features=3, kernel_size=4, strides=2)
  y = jax.random.normal(jax.random.key(0), (2, 5, 5, 6))
  variables = layer.init(jax.random.key(1), y)
  kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
  assert kernel.shape == (4, 4, 3, 6)  # the forward conv's HWIO kernel: 3 -> 6 channels
  out = layer.apply(variables, y)
  assert out.shape == (2, 10, 10, 3)
  np.testing.assert_allclose(out, ops.deconv2d(y, kernel, strides=2) + bias, rtol=1e-6)
  # output_shape picks another size the forward conv maps to 5x5.
  assert layer.apply(variables, y, output_shape=(9, 9)).shape == (2, 9, 9, 3)


def test_deconv_with_a_conv_kernel_is_that_conv_adjoint():
  conv = models.Conv(features=6, kernel_size=3, strides=2, use_bias=False)
  deconv = models.Deconv(features=4, kernel_size=3, strides=2, use_bias=False)
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  conv_vars = conv.init(jax.random.key(1), x)
  y = jax.random.normal(jax.random.key(2), conv.apply(conv_vars, x).shape)
  x_back = deconv.apply(conv_vars, y, output_shape=x.shape)  # tied: the conv's own kernel
  np.testing.assert_allclose(jnp.vdot(conv.apply(conv_vars, x), y), jnp.vdot(x, x_back), rtol=1e-5)


def test_deconv_init_matches_flax_conv_transpose_scale():
  # Both scale by the fan-in of the transposed conv (kh * kw * input channels).
  y = jnp.zeros((1, 8, 8, 64))
  ours = models.Deconv(features=16, kernel_size=4).init(jax.random.key(0), y)["params"]["kernel"]
  theirs = nn.ConvTranspose(16, (4, 4), strides=(2, 2)).init(jax.random.key(0), y)["params"]["kernel"]
  assert ours.shape == (4, 4, 16, 64) and theirs.shape == (4, 4, 64, 16)
  np.testing.assert_allclose(np.std(ours), np.std(theirs), rtol=0.1)


@pytest.mark.parametrize(
  "n, kwargs",
  [
    (1, {"stride": 3, "padding": 2, "output_padding": 1, "dilation": 2, "groups": 2}),
    (2, {"stride": (2, 1), "padding": (1, 0), "output_padding": (1, 0), "dilation": 1, "groups": 1}),
    (2, {"stride": 1, "padding": 1, "output_padding": 2, "dilation": 3, "groups": 3}),  # output_padding >= stride
    (3, {"stride": 2, "padding": 1, "output_padding": 1, "dilation": (1, 2, 1), "groups": 1, "bias": False}),
  ],
)
def test_deconv_from_torch_equals_the_torch_module(n, kwargs):
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  in_channels, out_channels = 6, 6
  module = getattr(torch.nn, f"ConvTranspose{n}d")(in_channels, out_channels, 3, **kwargs)
  y = np.random.default_rng(0).standard_normal((2, *(4, 3, 2)[:n], in_channels)).astype(np.float32)
  with torch.no_grad():
    expected = np.moveaxis(module(torch.from_numpy(np.moveaxis(y, -1, 1).copy())).numpy(), 1, -1)
  layer, variables = models.Deconv.from_torch(module)
  assert variables["params"]["kernel"].shape == (3,) * n + (out_channels // module.groups, in_channels)
  assert ("bias" in variables["params"]) == kwargs.get("bias", True)
  # The layer's own init makes the same parameter shapes: it is a Deconv like any other.
  assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), y)) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_allclose(layer.apply(variables, y), expected, rtol=1e-4, atol=1e-5)


def test_deconv_from_torch_output_size_is_output_shape():
  torch = pytest.importorskip("torch")
  module = torch.nn.ConvTranspose2d(4, 2, 3, stride=3, padding=1)
  y = np.random.default_rng(1).standard_normal((1, 3, 2, 4)).astype(np.float32)
  with torch.no_grad():
    expected = module(torch.from_numpy(np.moveaxis(y, -1, 1).copy()), output_size=(8, 6)).numpy()
  layer, variables = models.Deconv.from_torch(module)
  out = layer.apply(variables, y, output_shape=(8, 6))
  np.testing.assert_allclose(out, np.moveaxis(expected, 1, -1), rtol=1e-4, atol=1e-5)


def test_deconv_from_torch_refuses_other_padding_modes():
  class Module:  # what a module with another padding mode would carry; PyTorch itself refuses to build one
    padding_mode = "reflect"

  with pytest.raises(ValueError, match=r"^module\.padding_mode must be 'zeros'"):
    models.Deconv.from_torch(Module())


@pytest.mark.parametrize("shape", [(2, 9, 3), (1, 5, 6, 4, 3)])
def test_deconv_is_the_conv_adjoint_in_1d_and_3d(shape):
  conv = models.Conv(features=4, kernel_size=3, strides=2, use_bias=False)
  deconv = models.Deconv(features=3, kernel_size=3, strides=2, use_bias=False)
  x = jax.random.normal(jax.random.key(0), shape)
  conv_vars = conv.init(jax.random.key(1), x)
  y = jax.random.normal(jax.random.key(2), conv.apply(conv_vars, x).shape)
  x_back = deconv.apply(conv_vars, y, output_shape=x.shape)
  np.testing.assert_allclose(jnp.vdot(conv.apply(conv_vars, x), y), jnp.vdot(x, x_back), rtol=1e-5)
