"""attribution: one VJP, three ReLU rules; each property checked against a computation that does not use it."""

import re
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deconv_jax import attribution, models, ops


class OneConv(nn.Module):
  """A single conv layer followed by the activation."""

  features: int = 3
  kernel_size: int = 3
  strides: int = 1
  padding: str = "VALID"
  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    return self.activation(models.Conv(self.features, self.kernel_size, self.strides, self.padding, name="conv")(x))


class Tiny(nn.Module):
  """4x4 input -> 3x3 conv (1 channel) -> ReLU -> Dense(2) -> ReLU."""

  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    h = self.activation(models.Conv(1, 3, padding="VALID", name="conv")(x))
    return self.activation(nn.Dense(2, name="dense")(h.reshape(h.shape[0], -1)))


class ReluFirst(nn.Module):
  """ReLU straight on the pixels (shifted by 0.5), so the pixel-space signal is the signal at that ReLU."""

  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    h = self.activation(x - 0.5)
    h = self.activation(models.Conv(4, 3, name="conv")(h))
    return nn.Dense(3, name="dense")(h.reshape(h.shape[0], -1))


class TinyPool(nn.Module):
  """4x4 input -> 1x1 conv (1 channel) -> ReLU -> 2x2 max-pool -> Dense(1): a pooling layer to compute by hand."""

  activation: Callable = nn.relu

  @nn.compact
  def __call__(self, x):
    h = ops.max_pool(self.activation(models.Conv(1, 1, padding="VALID", name="conv")(x)), 2)
    return nn.Dense(1, name="dense")(h.reshape(h.shape[0], -1))


def small_cnn(pool=2, activation=nn.relu):
  return models.CNN(features=(8, 6), dense=(8,), pool=pool, num_classes=5, activation=activation)


def images(n, hw=16, c=1, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, hw, hw, c))


# ---------------------------------------------------------------- the rules


def test_relu_rules_backward():
  x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
  g = jnp.array([1.0, -1.0, 3.0, -2.0, 4.0])
  expected = {
    "saliency": [0, 0, 0, -2, 4],  # g * (x > 0)
    "deconvnet": [1, 0, 3, 0, 4],  # relu(g)
    "guided_backprop": [0, 0, 0, 0, 4],  # relu(g) * (x > 0)
  }
  for method, want in expected.items():
    y, vjp = jax.vjp(attribution.RELU_RULES[method], x)
    np.testing.assert_array_equal(y, jnp.maximum(x, 0))
    np.testing.assert_array_equal(attribution.RELU_RULES[method](x), y)  # the forward pass alone, not under vjp
    # A traced model says which rule each of its ReLUs runs.
    assert f"name=relu_{method}\n" in str(jax.make_jaxpr(attribution.RELU_RULES[method])(x))
    np.testing.assert_array_equal(vjp(g)[0], want, err_msg=method)


def test_activations_are_the_sown_values_in_order_and_the_submodules_outputs():
  model = small_cnn()
  x = images(2)
  variables = model.init(jax.random.key(0), x)
  sown = attribution.activations(model, variables, x, submodules=False)
  every = attribution.activations(model, variables, x)
  assert list(sown) == ["act1", "pool1", "act2", "pool2", "hidden1", "logits"]
  assert list(every) == [
    "output",
    "conv1",
    "act1",
    "pool1",
    "conv2",
    "act2",
    "pool2",
    "dense1",
    "hidden1",
    "head",
    "logits",
  ]
  logits = model.apply(variables, x)
  for acts in (sown, every):
    np.testing.assert_array_equal(acts["logits"], logits)
    np.testing.assert_array_equal(acts["pool1"], ops.max_pool(acts["act1"], 2))
  np.testing.assert_array_equal(every["output"], logits)
  np.testing.assert_array_equal(every["act1"], jnp.maximum(every["conv1"], 0))  # a submodule's output: pre-ReLU
  np.testing.assert_array_equal(every["head"], logits)


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    self.sow("intermediates", "act", h)
    return h


class Nested(nn.Module):
  """A module of submodules, one of them with its own submodule and sown value."""

  @nn.compact
  def __call__(self, x):
    h = Block(name="block")(x)
    return nn.Dense(3, name="dense")(h.reshape(h.shape[0], -1))


def test_activations_of_nested_modules_are_named_by_their_paths():
  x = images(2, hw=6)
  model = Nested()
  variables = model.init(jax.random.key(0), x)
  acts = attribution.activations(model, variables, x)
  assert list(acts) == ["output", "block/conv", "block/act", "block", "dense"]
  np.testing.assert_array_equal(acts["block/act"], jnp.maximum(acts["block/conv"], 0))
  np.testing.assert_array_equal(acts["block"], acts["block/act"])
  np.testing.assert_array_equal(acts["dense"], model.apply(variables, x))
  np.testing.assert_array_equal(acts["output"], acts["dense"])
  assert list(attribution.activations(model, variables, x, submodules=False)) == ["block/act"]


def test_targets_select_what_they_name():
  model = small_cnn()
  x = images(3)
  acts = attribution.activations(model, variables := model.init(jax.random.key(0), x), x)
  per_example = jnp.array([4, 0, 2])
  np.testing.assert_array_equal(attribution.logit(2)(acts), acts["output"][:, 2])
  np.testing.assert_array_equal(attribution.logit(per_example)(acts), acts["output"][jnp.arange(3), per_example])
  np.testing.assert_array_equal(attribution.logit(1, "logits")(acts), acts["logits"][:, 1])
  np.testing.assert_array_equal(attribution.layer("pool1")(acts), acts["pool1"])
  np.testing.assert_array_equal(attribution.channel("act2", 1)(acts), acts["act2"][..., 1])
  np.testing.assert_array_equal(
    attribution.channel("act2", per_example)(acts), acts["act2"][jnp.arange(3), :, :, per_example]
  )
  np.testing.assert_array_equal(attribution.unit("act2", (1, 2, 3))(acts), acts["act2"][:, 1, 2, 3])
  np.testing.assert_array_equal(attribution.unit("hidden1", (5,))(acts), acts["hidden1"][:, 5])
  message = "seed='zeros' is not allowed: 'ones' or 'values'"
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    attribution.attribute(model, variables, x, attribution.logit(0), seed="zeros")


# ---------------------------------------------------------------- saliency is the gradient


@pytest.mark.slow
@pytest.mark.parametrize("activation", [nn.relu, nn.gelu], ids=["relu", "gelu"])
def test_saliency_equals_jax_grad(activation):
  model = small_cnn(activation=activation)
  x = images(3)
  variables = model.init(jax.random.key(1), x)
  targets = {
    "logit": (attribution.logit(jnp.array([0, 2, 4])), lambda o, a: o[jnp.arange(3), jnp.array([0, 2, 4])]),
    "channel": (attribution.channel("act2", 1), lambda o, a: a["act2"][..., 1]),
    "layer": (attribution.layer("pool1"), lambda o, a: a["pool1"]),
  }
  for name, (target, direct) in targets.items():
    got = attribution.attribute(model, variables, x, target, "saliency")

    def total(x, direct=direct):
      out, state = model.apply(variables, x, mutable=["intermediates"])
      return direct(out, {k: v[-1] for k, v in state["intermediates"].items()}).sum()

    np.testing.assert_allclose(got, jax.grad(total)(x), rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- one conv layer: the filter, placed


@pytest.mark.slow
@given(
  kernel_size=st.integers(1, 4),
  strides=st.integers(1, 3),
  padding=st.sampled_from(["VALID", "SAME"]),
  hw=st.integers(5, 9),
  bias=st.floats(-3, 3),
  data=st.data(),
)
def test_deconvnet_of_one_unit_is_its_filter_at_its_receptive_field(kernel_size, strides, padding, hw, bias, data):
  model = OneConv(features=3, kernel_size=kernel_size, strides=strides, padding=padding)
  x = images(1, hw, c=2, seed=data.draw(st.integers(0, 99)))
  variables = model.init(jax.random.key(0), x)
  variables["params"]["conv"]["bias"] = jnp.full((3,), bias)  # many units inactive for large negative biases
  out_hw = -(-hw // strides) if padding == "SAME" else (hw - kernel_size) // strides + 1
  i, j = data.draw(st.integers(0, out_hw - 1)), data.draw(st.integers(0, out_hw - 1))
  c = data.draw(st.integers(0, 2))
  pad_top = max((out_hw - 1) * strides + kernel_size - hw, 0) // 2 if padding == "SAME" else 0

  kernel = np.asarray(variables["params"]["conv"]["kernel"])  # [k, k, Cin, Cout]
  expected = np.zeros((1, hw + 2 * kernel_size, hw + 2 * kernel_size, 2), np.float32)  # room for the padding
  r0, c0 = i * strides - pad_top + kernel_size, j * strides - pad_top + kernel_size
  expected[0, r0 : r0 + kernel_size, c0 : c0 + kernel_size] = kernel[..., c]
  expected = expected[:, kernel_size : kernel_size + hw, kernel_size : kernel_size + hw]

  target = attribution.unit("output", (i, j, c))
  projection = attribution.attribute(model, variables, x, target, "deconvnet")
  np.testing.assert_allclose(projection, expected, atol=1e-6)
  active = float(attribution.activations(model, variables, x)["conv"][0, i, j, c]) > 0
  guided = attribution.attribute(model, variables, x, target, "guided_backprop")
  np.testing.assert_allclose(guided, expected if active else 0 * expected, atol=1e-6)


# ---------------------------------------------------------------- forward masks


def test_guided_backprop_is_zero_where_the_forward_relu_was_inactive():
  model = ReluFirst()
  x = images(4, 8, seed=3)
  variables = model.init(jax.random.key(0), x)
  inactive = np.asarray(x <= 0.5)
  assert 0.2 < inactive.mean() < 0.8
  for k in range(3):
    guided = np.asarray(attribution.attribute(model, variables, x, attribution.logit(k), "guided_backprop"))
    deconv = np.asarray(attribution.attribute(model, variables, x, attribution.logit(k), "deconvnet"))
    assert np.all(guided[inactive] == 0)
    assert np.any(guided[~inactive] != 0)
    assert np.any(deconv[inactive] != 0)  # the deconvnet ignores the mask, so the check above could fail


@pytest.mark.slow
def test_deconvnet_does_not_depend_on_the_forward_relu_masks():
  # Without pooling there are no switches: the deconvnet's backward pass sees nothing of the input.
  model = small_cnn(pool=1)
  a, b = images(2, seed=1), images(2, seed=2) - 0.5
  variables = model.init(jax.random.key(0), a)
  masks = lambda x: [np.asarray(attribution.activations(model, variables, x)[f"conv{i}"] > 0) for i in (1, 2)]
  assert any(np.any(ma != mb) for ma, mb in zip(masks(a), masks(b)))
  target = attribution.logit(3)
  for method, same in [("deconvnet", True), ("guided_backprop", False), ("saliency", False)]:
    pa = attribution.attribute(model, variables, a, target, method)
    pb = attribution.attribute(model, variables, b, target, method)
    assert np.allclose(pa, pb, atol=1e-6) == same, method


# ---------------------------------------------------------------- batch independence


@pytest.mark.parametrize("method", attribution.METHODS)
def test_one_example_does_not_depend_on_the_rest_of_the_batch(method):
  model = small_cnn()
  x = images(5)
  variables = model.init(jax.random.key(0), x)
  channels = jnp.array([0, 1, 2, 3, 0])
  project = jax.jit(lambda x, c: attribution.attribute(model, variables, x, attribution.strongest("act2", c), method))
  full = project(x, channels)
  other = x.at[1:].set(jax.random.normal(jax.random.key(9), x[1:].shape))
  np.testing.assert_allclose(project(other, channels)[0], full[0], rtol=1e-5, atol=1e-7)
  for k in range(5):
    np.testing.assert_allclose(project(x[k : k + 1], channels[k : k + 1])[0], full[k], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- targets


def test_strongest_keeps_only_the_maximum_of_the_channel():
  model = small_cnn()
  x = images(3)
  variables = model.init(jax.random.key(0), x)
  acts = attribution.activations(model, variables, x)
  alive = [int(c) for c in np.flatnonzero(acts["act1"].min(axis=0).max(axis=(0, 1)) > 0)][:3]
  assert len(alive) == 3
  kept = attribution.strongest("act1", jnp.array(alive))(acts)
  for n, c in enumerate(alive):
    channel = np.asarray(acts["act1"][n, ..., c])
    assert np.count_nonzero(kept[n]) == 1
    assert kept[n].max() == channel.max()
    pos = attribution.argmax_position(acts["act1"][..., c])[n]
    assert kept[n][tuple(pos)] == channel.max()
  # Seeding with the values scales the single-unit projection by that unit's activation.
  target = attribution.strongest("act1", alive[0])
  ones = attribution.attribute(model, variables, x, target, "deconvnet")
  values = attribution.attribute(model, variables, x, target, "deconvnet", seed="values")
  scale = acts["act1"][..., alive[0]].max(axis=(1, 2))
  np.testing.assert_allclose(values, ones * scale[:, None, None, None], rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- a network small enough to do by hand


def test_hand_computed_tiny_network():
  # x is the 4x4 identity. The conv kernel is all ones with bias -2.5: its 2x2 output is the window sums
  # [[3, 2], [2, 3]] - 2.5 = [[.5, -.5], [-.5, .5]], so the ReLU is active on the diagonal: h = [.5, 0, 0, .5].
  # Dense column 0 = [2, -1, 1, -1], bias 0: z0 = 1 - .5 = .5, active.
  # Dense column 1 = [-1, 1, 1, 1], bias -.25: z1 = -.5 + .5 - .25 = -.25, inactive.
  x = jnp.eye(4).reshape(1, 4, 4, 1)
  variables = {
    "params": {
      "conv": {"kernel": jnp.ones((3, 3, 1, 1)), "bias": jnp.array([-2.5])},
      "dense": {"kernel": jnp.array([[2.0, -1], [-1, 1], [1, 1], [-1, 1]]), "bias": jnp.array([0.0, -0.25])},
    }
  }
  model = Tiny()
  np.testing.assert_allclose(model.apply(variables, x), [[0.5, 0.0]])
  # Output 0: the signal at the conv units is the dense column [[2, -1], [1, -1]];
  #   saliency masks it to [[2, 0], [0, -1]], deconvnet rectifies it to [[2, 0], [1, 0]],
  #   guided does both: [[2, 0], [0, 0]]; each unit then spreads its value over its 3x3 window.
  # Output 1 is inactive: saliency and guided are 0; the deconvnet passes relu(1) = 1 down,
  #   rectifies [[-1, 1], [1, 1]] to [[0, 1], [1, 1]] and spreads it.
  expected = {
    (0, "saliency"): [[2, 2, 2, 0], [2, 1, 1, -1], [2, 1, 1, -1], [0, -1, -1, -1]],
    (0, "deconvnet"): [[2, 2, 2, 0], [3, 3, 3, 0], [3, 3, 3, 0], [1, 1, 1, 0]],
    (0, "guided_backprop"): [[2, 2, 2, 0], [2, 2, 2, 0], [2, 2, 2, 0], [0, 0, 0, 0]],
    (1, "saliency"): np.zeros((4, 4)),
    (1, "deconvnet"): [[0, 1, 1, 1], [1, 3, 3, 2], [1, 3, 3, 2], [1, 2, 2, 1]],
    (1, "guided_backprop"): np.zeros((4, 4)),
  }
  for (k, method), want in expected.items():
    got = attribution.attribute(model, variables, x, attribution.logit(k), method)
    np.testing.assert_allclose(got[0, ..., 0], np.asarray(want, np.float32), err_msg=f"output {k}, {method}")


def test_hand_computed_network_with_tied_pooling_windows():
  # The 1x1 conv is x - 0.5, so after the ReLU the four 2x2 windows are
  #   top-left [[.5, .5], [0, .5]]: a maximum repeated three times;  top-right: all zero;
  #   bottom-left [[1.5, 0], [0, 1.5]]: repeated;                    bottom-right [[2.5, .5], [.5, 2.5]]: repeated.
  # Pooled [.5, 0, 1.5, 2.5]; dense [1, 2, 2, 3]: the output is .5 + 0 + 3 + 7.5 = 11.
  # Each window's switch is its first maximum in row-major order: (0, 0), (0, 2), (2, 0), (2, 2). The signal there
  # is the dense weight. Saliency and guided backprop mask it with the ReLU, which is inactive at (0, 2) (x = 0);
  # the deconvnet does not, so the all-zero window still sends its 2 to its first pixel. Splitting ties evenly
  # would give 1/3 to each tied pixel, 1/2 to each pixel of the zero window.
  x = jnp.array([[1.0, 1, 0, 0], [0, 1, 0, 0], [2, 0, 3, 1], [0, 2, 1, 3]]).reshape(1, 4, 4, 1)
  variables = {
    "params": {
      "conv": {"kernel": jnp.ones((1, 1, 1, 1)), "bias": jnp.array([-0.5])},
      "dense": {"kernel": jnp.array([[1.0], [2], [2], [3]]), "bias": jnp.array([0.0])},
    }
  }
  model = TinyPool()
  np.testing.assert_allclose(model.apply(variables, x), [[11.0]])
  masked = [[1, 0, 0, 0], [0, 0, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]]
  expected = {
    "saliency": masked,
    "deconvnet": [[1, 0, 2, 0], [0, 0, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]],
    "guided_backprop": masked,
  }
  for method, want in expected.items():
    got = attribution.attribute(model, variables, x, attribution.logit(0), method)
    np.testing.assert_array_equal(got[0, ..., 0], np.asarray(want, np.float32), err_msg=method)


def torch_cnn(torch, variables, method):
  """`small_cnn` in PyTorch on the same weights, its ReLUs' backward rule that of ``method`` (what captum's
  Saliency, Deconvolution and GuidedBackprop do): ``images [N, H, W, C] -> logits``, as a function of a tensor."""

  class Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
      ctx.save_for_backward(x)
      return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
      (x,) = ctx.saved_tensors
      rule = {"saliency": g * (x > 0), "deconvnet": g.clamp(min=0), "guided_backprop": g.clamp(min=0) * (x > 0)}
      return rule[method]

  p = jax.tree.map(lambda v: torch.from_numpy(np.asarray(v).copy()), variables["params"])
  conv = lambda h, name: torch.nn.functional.conv2d(h, p[name]["kernel"].permute(3, 2, 0, 1), p[name]["bias"])
  dense = lambda h, name: h @ p[name]["kernel"] + p[name]["bias"]

  def forward(images_nchw):
    h = images_nchw
    for name in ("conv1", "conv2"):
      h = torch.nn.functional.max_pool2d(Relu.apply(conv(h, name)), 2)
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)  # flattened in NHWC order, as ours
    return dense(Relu.apply(dense(h, "dense1")), "head")

  return forward


@pytest.mark.parametrize("method", attribution.RULES)
def test_equals_pytorch_on_the_same_weights_ties_included(method):
  # Saliency is PyTorch's gradient, the deconvnet and guided backprop PyTorch's (captum's) with the same switches,
  # on images of constant blocks and negative conv biases: pooling windows tie, at zero and above it.
  torch = pytest.importorskip("torch")
  model = small_cnn()
  blocks = jax.random.randint(jax.random.key(3), (3, 4, 4, 1), 0, 3).astype(jnp.float32) / 2
  x = jnp.repeat(jnp.repeat(blocks, 4, axis=1), 4, axis=2)  # [3, 16, 16, 1]
  variables = model.init(jax.random.key(0), x)
  for name in ("conv1", "conv2"):
    bias = variables["params"][name]["bias"]
    variables["params"][name]["bias"] = jax.random.uniform(jax.random.key(4), bias.shape, minval=-0.4, maxval=0.1)
  acts = attribution.activations(model, variables, x)
  for name in ("act1", "act2"):  # ties occur, at zero and above it, so the test can tell the rules apart
    windows = np.asarray(acts[name])[:, : acts[name].shape[1] // 2 * 2, : acts[name].shape[2] // 2 * 2]
    windows = windows.reshape(3, windows.shape[1] // 2, 2, windows.shape[2] // 2, 2, -1).transpose(0, 1, 3, 5, 2, 4)
    windows = windows.reshape(*windows.shape[:4], 4)
    ties = (windows == windows.max(-1, keepdims=True)).sum(-1) > 1
    assert np.any(ties & (windows.max(-1) == 0)), name
    assert name == "act2" or np.any(ties & (windows.max(-1) > 0)), name
  labels = jnp.array([0, 2, 4])
  ours = np.asarray(attribution.attribute(model, variables, x, attribution.logit(labels), method))

  images = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).requires_grad_()
  logits = torch_cnn(torch, variables, method)(images)
  logits[torch.arange(3), torch.tensor([0, 2, 4])].sum().backward()
  expected = images.grad.numpy().transpose(0, 2, 3, 1)
  assert np.abs(expected).max() > 0
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


# ---------------------------------------------------------------- occlusion


def test_occlusion_of_a_linear_target_is_each_patch_s_own_sum():
  """For a linear target f(x) = <w, x>, blanking a patch drops f by the patch's share of <w, x - baseline>: with
  patches that tile the image (stride = patch), every pixel shows its own patch's drop; with overlapping ones, the
  mean over the patches that cover it, the last cut at the border."""
  x = images(2, hw=6, c=2)
  w = jax.random.normal(jax.random.key(5), x.shape[1:])
  f = lambda v: jnp.einsum("nhwc,hwc->n", v, w)
  share = np.asarray((x - 0.3) * w).sum(-1)  # [N, H, W]: each pixel's part of the drop
  tiled = attribution.occlusion(f, x, patch=(3, 2), stride=(3, 2), baseline=0.3)
  expected = share.reshape(2, 2, 3, 3, 2).sum((2, 4))  # per 3x2 patch
  expected = np.repeat(np.repeat(expected, 3, axis=1), 2, axis=2)
  np.testing.assert_allclose(tiled, np.repeat(expected[..., None], 2, -1), rtol=1e-5, atol=1e-5)
  # patch 4, stride 3 on 6 pixels: patches at rows 0-3 and 3-5 (cut), so rows 3 belongs to both.
  overlapping = attribution.occlusion(f, x, patch=4, stride=3, baseline=0.3, batch_size=3)
  spans = [slice(0, 4), slice(3, 6)]
  drops = {(i, j): share[:, a, b].sum((1, 2)) for i, a in enumerate(spans) for j, b in enumerate(spans)}
  expected = np.zeros((2, 6, 6))
  for r in range(6):
    for c in range(6):
      covering = [
        drops[i, j] for i, a in enumerate(spans) for j, b in enumerate(spans) if r in range(6)[a] and c in range(6)[b]
      ]
      expected[:, r, c] = np.mean(covering, axis=0)
  np.testing.assert_allclose(overlapping[..., 0], expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(overlapping[..., 0], overlapping[..., 1])  # a patch blanks every channel
  # under jit, one lax.map over the patches: the same values
  jitted = jax.jit(lambda v: attribution.occlusion(f, v, patch=4, stride=3, baseline=0.3))(x)
  np.testing.assert_allclose(jitted, overlapping, rtol=1e-6, atol=1e-6)


def test_occlusion_is_a_method_of_attribute_with_the_default_patch():
  model = small_cnn()
  x = images(2)
  variables = model.init(jax.random.key(0), x)
  target = attribution.logit(jnp.array([1, 3]))
  assert attribution.occlusion_patch((16, 16)) == (2, 1) and attribution.occlusion_patch((28, 28)) == (4, 2)
  got = attribution.attribute(model, variables, x, target, "occlusion")
  f = lambda v: target(attribution.activations(model, variables, v))
  np.testing.assert_allclose(got, attribution.occlusion(f, x, patch=2, stride=1), rtol=1e-6, atol=1e-7)


def test_occlusion_names_bad_arguments():
  f = lambda v: v.sum((1, 2, 3))
  x = images(1, hw=6)
  for kwargs, message in [
    ({"patch": 7, "stride": 1}, "patch (7, 7) is larger than the 6x6 image"),
    ({"patch": 2, "stride": 3}, "stride (3, 3) is larger than patch (2, 2): pixels between patches would never count"),
    ({"patch": 0, "stride": 1}, "patch must be >= 1, got 0"),
  ]:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
      attribution.occlusion(f, x, **kwargs)
  with pytest.raises(ValueError, match=re.escape("f must return one value per example, shape (1,), got (1, 6)")):
    attribution.occlusion(lambda v: v.sum((2, 3)), x, patch=2, stride=2)
  with pytest.raises(ValueError, match=re.escape("x must be [N, H, W, C], got shape (6, 6)")):
    attribution.occlusion(f, x[0, ..., 0], patch=2, stride=2)


# ---------------------------------------------------------------- errors


def test_rules_that_need_a_relu_network_say_so():
  model = small_cnn(activation=nn.gelu)
  x = images(1)
  variables = model.init(jax.random.key(0), x)
  for method in ("deconvnet", "guided_backprop"):
    message = f"method='{method}' needs a ReLU network: CNN has no ReLU on the path from its inputs; it has gelu at "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}.*models.py:[0-9]+ \\(CNN.__call__\\)"):
      attribution.attribute(model, variables, x, attribution.logit(0), method)
  message = "method='gradcam' is not allowed: one of ('saliency', 'deconvnet', 'guided_backprop', 'occlusion')"
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    attribution.attribute(model, variables, x, attribution.logit(0), "gradcam")
  # Saliency needs no ReLU: the network is used as it is, and the map is its gradient.
  got = attribution.attribute(model, variables, x, attribution.logit(0), "saliency")
  np.testing.assert_allclose(got, jax.grad(lambda v: model.apply(variables, v)[0, 0])(x), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(attribution.attribute(model, variables, x, attribution.logit(0)), got)  # the default
