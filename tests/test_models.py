"""Modules: the CNN's shapes and named activations, Deconv as the adjoint of Conv, the Generator, the
Discriminator, and the (tied) Autoencoder whose decoder is the encoder's adjoint."""

import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import attribution, models, ops
from deconv_jax import config as config_lib


@pytest.mark.slow
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
  acts = attribution.activations(model, variables, jnp.zeros((2, 28, 28, 1)), submodules=False)
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 9, 3), (1, 5, 6, 4, 3)])
def test_deconv_is_the_conv_adjoint_in_1d_and_3d(shape):
  conv = models.Conv(features=4, kernel_size=3, strides=2, use_bias=False)
  deconv = models.Deconv(features=3, kernel_size=3, strides=2, use_bias=False)
  x = jax.random.normal(jax.random.key(0), shape)
  conv_vars = conv.init(jax.random.key(1), x)
  y = jax.random.normal(jax.random.key(2), conv.apply(conv_vars, x).shape)
  x_back = deconv.apply(conv_vars, y, output_shape=x.shape)
  np.testing.assert_allclose(jnp.vdot(conv.apply(conv_vars, x), y), jnp.vdot(x, x_back), rtol=1e-5)


# ----------------------------------------------------------------------------
# Helpers of the generator tests.
# ----------------------------------------------------------------------------

Z_DIM = 16


def _shapes(tree):
  return jax.tree.map(jnp.shape, tree)


def _size(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _normal(seed: int, shape) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _init(model, *args, seed: int = 0, **kwargs):
  """Variables shaped as ``model.init(key, *args, **kwargs)`` makes them, drawn with NumPy.

  ``model.init`` compiles a truncated-normal sampler for every new kernel shape (about half a
  second each on XLA:CPU); this takes the shapes from ``jax.eval_shape`` and compiles nothing.
  Kernels and embeddings ~ N(0, 1 / fan_in), biases (non-zero, so a dropped bias shows) ~ N(0, 0.1^2),
  batch-norm scales ~ 1 + N(0, 0.1^2), running means 0 and variances 1.
  """
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.key(0), *args)

  def draw(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    if names[0] == "batch_stats":
      return jnp.full(leaf.shape, 0.0 if names[-1] == "mean" else 1.0, leaf.dtype)
    noise = rng.standard_normal(leaf.shape)
    if names[-1] in ("kernel", "embedding"):
      noise = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      noise = (1.0 if names[-1] == "scale" else 0.0) + 0.1 * noise
    return jnp.asarray(noise, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


# ----------------------------------------------------------------------------
# Generator.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("kernel_size", [3, 4, 5])
@pytest.mark.parametrize("upsample", ["transpose", "resize_conv", "subpixel"])
def test_every_generator_variant_maps_z_to_28x28(upsample, kernel_size, batch_norm):
  gen = models.Generator(
    features=(8, 4), base_features=6, upsample=upsample, kernel_size=kernel_size, batch_norm=batch_norm
  )
  z = _normal(0, (3, Z_DIM))
  variables = _init(gen, z)
  images = gen.apply(variables, z)
  assert images.shape == (3, 28, 28, 1)
  assert np.all(np.isfinite(images))
  params = variables["params"]
  k = kernel_size
  # The first block's kernel says which up-sampling it is: Deconv keeps the forward conv's HWIO layout.
  assert (
    params["up1"]["kernel"].shape
    == {
      "transpose": (k, k, 8, 6),  # Deconv 6 -> 8 channels: kernel of the conv 8 -> 6
      "resize_conv": (k, k, 6, 8),
      "subpixel": (k, k, 6, 4 * 8),  # then depth_to_space(2): 32 -> 8 channels
    }[upsample]
  )
  assert params["out"]["kernel"].shape == ((k, k, 1, 4) if upsample == "transpose" else (k, k, 4, 1))
  assert ("bn1" in params) == batch_norm and ("bias" in params["up1"]) != batch_norm
  assert ("batch_stats" in variables) == batch_norm


@pytest.mark.parametrize("upsample", ["transpose", "resize_conv", "subpixel"])
def test_each_upsample_block_is_the_op_it_names(upsample):
  gen = models.Generator(features=(4,), upsample=upsample, resize_method="bilinear", batch_norm=False)
  gen = gen.clone(output_activation="none", activation=jnp.tanh)
  fmap = _normal(0, (2, 3, 5, 3))
  variables = _init(gen, fmap)
  up, out = variables["params"]["up1"], variables["params"]["out"]
  if upsample == "transpose":
    h = ops.deconv2d(fmap, up["kernel"], strides=2) + up["bias"]
  elif upsample == "resize_conv":
    h = ops.conv2d(ops.resize(fmap, 2, "bilinear"), up["kernel"]) + up["bias"]
  else:  # the conv's 16 channels (and biases) are shuffled into 2x2 blocks of 4
    h = ops.depth_to_space(ops.conv2d(fmap, up["kernel"]) + up["bias"], 2)
  h = jnp.tanh(h)
  last = ops.deconv2d if upsample == "transpose" else ops.conv2d
  expected = last(h, out["kernel"]) + out["bias"]
  images = gen.apply(variables, fmap)
  assert images.shape == (2, 6, 10, 1)
  np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_keras_original_stack_is_one_configuration():
  # Keras: Conv2DTranspose(32, 4, strides=2, "same", relu), (16, 4, 2, relu), (1, 4, 1, sigmoid).
  gen = models.Generator(features=(32, 16), upsample="transpose", kernel_size=4, output_activation="sigmoid")
  gen = gen.clone(batch_norm=False)
  features = _normal(0, (2, 7, 7, 5))
  variables = gen.init(jax.random.key(1), features)
  assert _shapes(variables) == {
    "params": {
      "up1": {"kernel": (4, 4, 32, 5), "bias": (32,)},
      "up2": {"kernel": (4, 4, 16, 32), "bias": (16,)},
      "out": {"kernel": (4, 4, 1, 16), "bias": (1,)},
    }
  }
  images = gen.apply(variables, features)
  assert images.shape == (2, 28, 28, 1)
  p = variables["params"]
  h = jax.nn.relu(ops.deconv2d(features, p["up1"]["kernel"], strides=2) + p["up1"]["bias"])
  h = jax.nn.relu(ops.deconv2d(h, p["up2"]["kernel"], strides=2) + p["up2"]["bias"])
  expected = jax.nn.sigmoid(ops.deconv2d(h, p["out"]["kernel"], strides=1) + p["out"]["bias"])
  np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("output_activation,low,high", [("tanh", -1, 1), ("sigmoid", 0, 1), ("none", None, None)])
def test_output_activation_bounds_the_images(output_activation, low, high):
  gen = models.Generator(features=(4,), base_shape=(3, 3), base_features=4, output_activation=output_activation)
  gen = gen.clone(batch_norm=False)
  z = 100.0 * _normal(0, (4, Z_DIM))  # large pre-activations: an unbounded output leaves [-1, 1]
  images = gen.apply(_init(gen, z), z)
  if low is None:
    assert np.abs(images).max() > 1
  else:
    assert images.min() >= low and images.max() <= high
    assert images.max() - images.min() > 0.5 * (high - low)  # not collapsed to one value


def test_conditioned_generator_uses_its_labels():
  gen = models.Generator(features=(4,), base_shape=(3, 3), base_features=4, num_classes=10, batch_norm=False)
  z = _normal(0, (3, Z_DIM))
  labels = jnp.array([0, 3, 9])
  variables = _init(gen, z, labels)
  assert variables["params"]["project"]["kernel"].shape == (Z_DIM + 10, 3 * 3 * 4)  # one-hot concatenated to z
  images = gen.apply(variables, z, labels)
  assert images.shape == (3, 6, 6, 1)
  assert not np.allclose(images[0], gen.apply(variables, z, jnp.array([1, 3, 9]))[0])
  np.testing.assert_allclose(images[1:], gen.apply(variables, z, jnp.array([1, 3, 9]))[1:], rtol=1e-6)
  # A feature-map input gets the one-hot as constant channels.
  fmap = _normal(2, (3, 3, 3, 2))
  fvars = _init(gen, fmap, labels)
  assert fvars["params"]["up1"]["kernel"].shape == (4, 4, 4, 2 + 10)
  assert not np.allclose(gen.apply(fvars, fmap, labels), gen.apply(fvars, fmap, labels + 1))
  with pytest.raises(ValueError, match="num_classes=10: pass integer labels"):
    _init(gen, z)
  with pytest.raises(ValueError, match="labels must have shape"):
    _init(gen, z, labels[:2])
  with pytest.raises(ValueError, match="takes no labels"):
    _init(gen.clone(num_classes=0), z, labels)


def test_generator_rejects_shapes_it_cannot_make():
  z, fmap = jnp.zeros((1, Z_DIM)), jnp.zeros((1, 5, 5, 3))
  gen = models.Generator(features=(4, 4), base_features=4, output_hw=(28, 28))
  assert jax.eval_shape(gen.apply, _init(gen, z), z).shape == (1, 28, 28, 1)
  with pytest.raises(ValueError, match=r"base_shape \(6, 7\) doubled by 2 blocks gives \(24, 28\), not output_hw"):
    _init(gen.clone(base_shape=(6, 7)), z)
  with pytest.raises(ValueError, match=r"feature map's \(h, w\) \(5, 5\) doubled by 2 blocks gives \(20, 20\)"):
    _init(gen, fmap)
  with pytest.raises(ValueError, match="upsample must be one of"):
    _init(gen.clone(upsample="deconv"), z)
  with pytest.raises(ValueError, match="output_activation must be one of"):
    _init(gen.clone(output_activation="relu"), z)
  with pytest.raises(ValueError, match="method must be"):
    _init(gen.clone(upsample="resize_conv", resize_method="cubic"), z)
  with pytest.raises(ValueError, match="z_or_features must be"):
    _init(gen, jnp.zeros((1, 4, Z_DIM)))


def test_batch_norm_updates_batch_stats_only_in_training():
  gen = models.Generator(features=(4,), base_shape=(3, 3), base_features=4, batch_norm=True)
  z = _normal(0, (8, Z_DIM))
  variables = _init(gen, z)
  _, updated = gen.apply(variables, z, train=True, mutable=["batch_stats"])
  for name in ("bn0", "bn1"):
    assert not np.allclose(updated["batch_stats"][name]["mean"], variables["batch_stats"][name]["mean"])
    assert not np.allclose(updated["batch_stats"][name]["var"], variables["batch_stats"][name]["var"])
  _, unchanged = gen.apply(variables, z, train=False, mutable=["batch_stats"])
  jax.tree.map(np.testing.assert_array_equal, unchanged["batch_stats"], variables["batch_stats"])
  # In training the output depends on the rest of the batch; in evaluation it does not.
  assert not np.allclose(
    gen.apply(variables, z, train=True, mutable=["batch_stats"])[0][:4],
    gen.apply(variables, z[:4], train=True, mutable=["batch_stats"])[0],
  )
  np.testing.assert_allclose(gen.apply(variables, z)[:4], gen.apply(variables, z[:4]), rtol=1e-5, atol=1e-6)


def test_bn_axis_name_syncs_statistics_across_the_mapped_axis():
  gen = models.Generator(features=(4,), base_shape=(3, 3), base_features=4, batch_norm=True, bn_axis_name="batch")
  z = _normal(0, (8, Z_DIM))
  variables = _init(gen, z)
  step = lambda model: lambda z: model.apply(variables, z, train=True, mutable=["batch_stats"])
  # Two "devices" of 4 examples (vmap with an axis name runs the same collectives as pmap).
  synced_images, synced = jax.vmap(step(gen), axis_name="batch")(z.reshape(2, 4, Z_DIM))
  whole_images, whole = step(gen.clone(bn_axis_name=None))(z)
  np.testing.assert_allclose(synced_images.reshape(whole_images.shape), whole_images, rtol=1e-4, atol=1e-5)
  for shard in range(2):
    mean = synced["batch_stats"]["bn1"]["mean"][shard]
    np.testing.assert_allclose(mean, whole["batch_stats"]["bn1"]["mean"], rtol=1e-4, atol=1e-6)
  _, unsynced = jax.vmap(step(gen.clone(bn_axis_name=None)))(z.reshape(2, 4, Z_DIM))
  assert not np.allclose(unsynced["batch_stats"]["bn1"]["mean"][0], whole["batch_stats"]["bn1"]["mean"])


# ----------------------------------------------------------------------------
# Discriminator.
# ----------------------------------------------------------------------------


def test_discriminator_gives_one_logit_per_image():
  disc = models.Discriminator(features=(4, 8))
  images = _normal(0, (3, 28, 28, 1))
  variables = _init(disc, images)
  assert _shapes(variables["params"]) == {
    "conv1": {"kernel": (4, 4, 1, 4), "bias": (4,)},
    "conv2": {"kernel": (4, 4, 4, 8), "bias": (8,)},
    "head": {"kernel": (7 * 7 * 8, 1), "bias": (1,)},
  }
  logits = disc.apply(variables, images)
  assert logits.shape == (3,)
  assert np.all(np.isfinite(logits)) and np.ptp(logits) > 0


def test_projection_discriminator_conditions_on_labels():
  disc = models.Discriminator(features=(4, 8), num_classes=10)
  images = _normal(0, (3, 12, 12, 2))
  labels = jnp.array([1, 1, 7])
  variables = _init(disc, images, labels)
  assert variables["params"]["embed"]["embedding"].shape == (10, 3 * 3 * 8)
  logits = disc.apply(variables, images, labels)
  assert logits.shape == (3,)
  other = disc.apply(variables, images, jnp.array([2, 1, 7]))
  assert not np.isclose(logits[0], other[0])
  np.testing.assert_allclose(logits[1:], other[1:], rtol=1e-6)
  # The projection term: logit(y) - logit(y') == <embed(y) - embed(y'), h>.
  e = variables["params"]["embed"]["embedding"]
  x = images
  for name in ("conv1", "conv2"):
    p = variables["params"][name]
    x = jax.nn.leaky_relu(ops.conv2d(x, p["kernel"], strides=2) + p["bias"], 0.2)
  h = x.reshape(3, -1)
  np.testing.assert_allclose(logits[0] - other[0], jnp.dot(e[1] - e[2], h[0]), rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="pass integer labels"):
    disc.apply(variables, images)


# ----------------------------------------------------------------------------
# Autoencoder: the tied decoder is the encoder's adjoint.
# ----------------------------------------------------------------------------


def _encode_decode_linear(model, seed=0):
  """Variables, x, E_lin(x), y and D_lin(y) for a random x and code y."""
  x = _normal(seed, (2, *model.image_shape))
  variables = _init(model, x, seed=seed + 1)
  ex = model.apply(variables, x, method=models.Autoencoder.encode, linear=True)
  y = _normal(seed + 2, ex.shape)
  dy = model.apply(variables, y, method=models.Autoencoder.decode, linear=True)
  assert dy.shape == x.shape
  return variables, x, ex, y, dy


def test_tied_single_layer_decoder_is_the_adjoint_of_its_conv():
  # 9 -> 5 with stride 2: 10 also maps to 5, so the decoder must pass the encoder's input size.
  model = models.Autoencoder(image_shape=(9, 9, 2), features=(3,), kernel_size=3, tied=True)
  variables, x, ex, y, dy = _encode_decode_linear(model)
  kernel = variables["params"]["encoder"]["conv1"]["kernel"]
  np.testing.assert_allclose(ex, ops.conv2d(x, kernel, strides=2), rtol=1e-6)
  np.testing.assert_allclose(dy, ops.deconv2d(y, kernel, strides=2, input_shape=(9, 9)), rtol=1e-6)
  np.testing.assert_allclose(jnp.vdot(ex, y), jnp.vdot(x, dy), rtol=1e-4)


@pytest.mark.parametrize("latent_dim", [0, 5])
@pytest.mark.parametrize("padding,kernel_size", [("SAME", 4), ("VALID", 3), (1, 3)])
def test_tied_linear_decoder_is_the_adjoint_of_the_linear_encoder(latent_dim, padding, kernel_size):
  model = models.Autoencoder(
    image_shape=(13, 10, 2), features=(4, 6), kernel_size=kernel_size, padding=padding, latent_dim=latent_dim, tied=True
  )
  _, x, ex, y, dy = _encode_decode_linear(model)
  assert ex.shape[1:] == ((latent_dim,) if latent_dim else ex.shape[1:])
  np.testing.assert_allclose(jnp.vdot(ex, y), jnp.vdot(x, dy), rtol=1e-4)
  # The free decoder has kernels of the same shapes but is no adjoint.
  free = model.clone(tied=False)
  _, x, ex, y, dy = _encode_decode_linear(free)
  assert not np.isclose(jnp.vdot(ex, y), jnp.vdot(x, dy), rtol=1e-2)


def test_tied_decoder_layers_are_deconv2d_of_encoder_kernels_plus_bias_and_activation():
  model = models.Autoencoder(image_shape=(8, 8, 1), features=(3, 5), latent_dim=4, tied=True)
  x = _normal(0, (2, 8, 8, 1))
  variables = _init(model, x)  # non-zero decoder biases, so a missing or misplaced bias shows
  enc, dec = variables["params"]["encoder"], variables["params"]["decoder"]
  code = _normal(2, (2, 4))
  h = jax.nn.relu(code @ enc["bottleneck"]["kernel"].T + dec["dense_bias"]).reshape(2, 2, 2, 5)
  h = jax.nn.relu(ops.deconv2d(h, enc["conv2"]["kernel"], strides=2) + dec["bias2"])
  expected = jax.nn.sigmoid(ops.deconv2d(h, enc["conv1"]["kernel"], strides=2) + dec["bias1"])
  np.testing.assert_allclose(model.apply(variables, code, method=models.Autoencoder.decode), expected, rtol=1e-5)
  assert model.apply(variables, x).shape == x.shape


@pytest.mark.parametrize("latent_dim", [0, 4])
def test_tied_decoder_owns_no_kernels_and_free_decoder_does(latent_dim):
  tied = models.Autoencoder(image_shape=(8, 8, 1), features=(3, 5), latent_dim=latent_dim, tied=True)
  x = jnp.zeros((1, 8, 8, 1))
  tied_params = jax.eval_shape(tied.init, jax.random.key(0), x)["params"]
  free_params = jax.eval_shape(tied.clone(tied=False).init, jax.random.key(0), x)["params"]
  encoder_kernels = {k: v["kernel"].shape for k, v in tied_params["encoder"].items()}
  assert _shapes(tied_params["decoder"]) == {
    "bias1": (1,),
    "bias2": (3,),
    **({"dense_bias": (2 * 2 * 5,)} if latent_dim else {}),
  }
  free_kernels = {k: v["kernel"].shape for k, v in free_params["decoder"].items()}
  mirror = {"deconv1": "conv1", "deconv2": "conv2", "dense": "bottleneck"}
  assert {mirror[k]: (s[::-1] if k == "dense" else s) for k, s in free_kernels.items()} == encoder_kernels
  assert _size(free_params) - _size(tied_params) == sum(int(np.prod(s)) for s in encoder_kernels.values())


def test_tied_decoder_gradient_reaches_the_encoder_kernels():
  model = models.Autoencoder(image_shape=(8, 8, 1), features=(3,), tied=True)
  variables = _init(model, jnp.zeros((1, 8, 8, 1)))
  code = _normal(1, (2, 4, 4, 3))
  decode_loss = lambda m: lambda v: jnp.sum(m.apply(v, code, method=models.Autoencoder.decode) ** 2)
  grads = jax.grad(decode_loss(model))(variables)["params"]
  assert np.abs(grads["encoder"]["conv1"]["kernel"]).max() > 0
  free = model.clone(tied=False)
  free_vars = _init(free, jnp.zeros((1, 8, 8, 1)))
  free_grads = jax.grad(decode_loss(free))(free_vars)["params"]
  assert np.abs(free_grads["encoder"]["conv1"]["kernel"]).max() == 0


def test_autoencoder_rejects_wrong_shapes():
  model = models.Autoencoder(image_shape=(8, 8, 1), features=(3,), latent_dim=4)
  variables = _init(model, jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="images must be"):
    model.apply(variables, jnp.zeros((1, 9, 8, 1)))
  with pytest.raises(ValueError, match="code must be"):
    model.apply(variables, jnp.zeros((1, 5)), method=models.Autoencoder.decode)


@pytest.mark.parametrize("upsample", list(models.UPSAMPLERS))
def test_out_strides_2_makes_the_output_layer_up_sample(upsample):
  """Radford et al.'s DCGAN: the last transposed conv makes the image, with no stride-1 layer after it."""
  z = jnp.zeros((2, Z_DIM))
  gen = models.Generator(features=(8,), base_features=4, upsample=upsample, out_strides=2, output_hw=(28, 28))
  variables = _init(gen, z)
  assert jax.eval_shape(gen.apply, variables, z).shape == (2, 28, 28, 1)
  # The output layer is the variant's up-sampling layer to 1 channel (a Deconv's kernel is its forward conv's).
  out_kernel = {"transpose": (4, 4, 1, 8), "resize_conv": (4, 4, 8, 1), "subpixel": (4, 4, 8, 4)}[upsample]
  assert variables["params"]["out"]["kernel"].shape == out_kernel
  with pytest.raises(ValueError, match="out_strides must be 1 or 2"):
    _init(gen.clone(out_strides=3), z)


def test_peers_dcgan_has_the_peers_layers():
  """peers_dcgan_config: G Dense 7x7x128, ConvT 64 4x4 s2, ConvT 1 4x4 s2; D Conv 64, Conv 128 4x4 s2, Dense 1."""
  from deconv_jax.experiments.speed import train_steps
  from deconv_jax.tasks import gan

  config = train_steps.peers_dcgan_config()
  info = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)
  state = jax.eval_shape(lambda r: gan.create_state(config, r, info, 1), jax.random.key(0))
  shapes = jax.tree.map(lambda a: a.shape, state.params)
  assert shapes["generator"] == {
    "project": {"kernel": (100, 7 * 7 * 128), "bias": (7 * 7 * 128,)},
    "up1": {"kernel": (4, 4, 64, 128), "bias": (64,)},  # a Deconv's kernel is its forward conv's [k, k, Cin, Cout]
    "out": {"kernel": (4, 4, 1, 64), "bias": (1,)},
  }
  assert shapes["discriminator"] == {
    "conv1": {"kernel": (4, 4, 1, 64), "bias": (64,)},
    "conv2": {"kernel": (4, 4, 64, 128), "bias": (128,)},
    "head": {"kernel": (7 * 7 * 128, 1), "bias": (1,)},
  }
