"""attribute_fn and occlusion against captum, on networks written the way their authors write them.

`reference_networks` holds each network in PyTorch and in three JAX forms (Flax Linen, Flax NNX, plain ``lax``) on
one set of weights. The JAX forms must give the same attributions to the bit: the rule belongs to the function, not
to the library it was written with. Each must equal captum's Saliency, Deconvolution, GuidedBackprop and Occlusion of
the PyTorch form, per example, to float32 rounding. The weights make many ReLUs inactive, so that whole max-pooling
windows are zero and tie; the deconvnet's result depends on which position of such a window the pooling's VJP picks
(the first, in both), so these comparisons cover ties. captum rewrites the ReLUs it can hook, ``nn.ReLU`` modules;
JAX sees every ReLU of the function, so on a network whose ReLUs are functional calls the two differ, and
`test_captum_misses_functional_relus` shows how.

Each comparison prints ``captum <network> <method> max_rel_diff=<value> ...`` (run with ``-s``): the largest difference
relative to the element, floored at 1e-5 of the map's largest magnitude, where the tolerance sits.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_networks as rn

from deconv_jax import attribution

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks:UserWarning")  # captum's, on every call

CAPTUM = {"saliency": "Saliency", "deconvnet": "Deconvolution", "guided_backprop": "GuidedBackprop"}
RULES = tuple(CAPTUM)  # the methods that differ at the ReLUs; occlusion is compared on its own
RTOL, ATOL = 1e-4, 1e-5  # ATOL times the largest magnitude of the expected map
SLOW_RESNET = pytest.param(rn.RESNET18, id="resnet18", marks=pytest.mark.slow)
# The networks with nn.ReLU modules, all of whose ReLUs captum hooks.
HOOKED = [
  pytest.param(rn.CNN, id="cnn"),
  SLOW_RESNET,
  pytest.param(rn.VGG, id="vgg"),
  pytest.param(rn.RELU_MODULES, id="relu_modules"),
]


def case(net: rn.Network) -> tuple[rn.Weights, np.ndarray, np.ndarray]:
  """``(weights, images [N, H, W, C], labels [N])``: a batch of 3 (2 for the ResNet), a different class each."""
  n = 2 if net is rn.RESNET18 else 3
  return rn.make_weights(net, seed=0), rn.images(net, n, seed=1), np.arange(n) * 2 % net.num_classes


def selected(forward, labels):
  """``images -> forward(images)[n, labels[n]]``: one logit per example, the target of every method."""
  return lambda x: forward(x)[jnp.arange(len(labels)), labels]


def nchw(torch, x: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def captum_map(model, x: np.ndarray, labels: np.ndarray, method: str) -> np.ndarray:
  """captum's ``method`` of the PyTorch ``model`` for ``labels``, NHWC."""
  torch = pytest.importorskip("torch")
  captum_attr = pytest.importorskip("captum.attr")
  explainer = getattr(captum_attr, CAPTUM[method])(model)
  options = {"abs": False} if method == "saliency" else {}  # captum's Saliency is |gradient| by default
  result = explainer.attribute(nchw(torch, x).requires_grad_(), target=torch.from_numpy(labels), **options)
  return result.detach().numpy().transpose(0, 2, 3, 1)


def compare(ours: np.ndarray, expected: np.ndarray, what: str) -> float:
  """Asserts ``ours`` equals ``expected`` to RTOL, ATOL; prints and returns the largest relative difference (and the
  largest difference relative to the map's largest magnitude)."""
  ours, expected = np.asarray(ours), np.asarray(expected)
  scale = float(np.abs(expected).max())
  assert scale > 0, f"{what}: the expected map is zero, so the comparison would show nothing"
  difference = np.abs(ours - expected)
  relative = float((difference / np.maximum(np.abs(expected), ATOL * scale)).max())
  print(f"captum {what} max_rel_diff={relative:.3g} max_abs_diff/max_abs={difference.max() / scale:.3g}")
  np.testing.assert_allclose(ours, expected, rtol=RTOL, atol=ATOL * scale, err_msg=f"{what}: max_rel_diff={relative}")
  return relative


# ---------------------------------------------------------------- the forms are one network


@pytest.mark.parametrize(
  "net", [SLOW_RESNET if net is rn.RESNET18 else pytest.param(net, id=net.name) for net in rn.NETWORKS]
)
def test_forward_equals_pytorch(net):
  """Every JAX form computes the PyTorch form's logits from the one set of weights: the layouts are converted right."""
  torch = pytest.importorskip("torch")
  weights, x, _ = case(net)
  with torch.no_grad():
    expected = rn.torch_model(net, weights)(nchw(torch, x)).numpy()
  for form, forward in rn.jax_forms(net, weights).items():
    np.testing.assert_allclose(jax.jit(forward)(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-5, err_msg=form)


@pytest.mark.parametrize("net", [pytest.param(rn.CNN, id="cnn"), SLOW_RESNET, pytest.param(rn.VGG, id="vgg")])
def test_relu_zeros_tie_max_pooling_windows(net):
  """The images and weights the comparisons run on put whole windows of ReLU zeros into every max pooling of the
  PyTorch form, so that the deconvnet's comparison depends on which tied position each window's VJP picks."""
  torch = pytest.importorskip("torch")
  weights, x, _ = case(net)
  model = rn.torch_model(net, weights)
  inputs = []
  pools = [m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d)]
  hooks = [m.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach().clone()))) for m in pools]
  with torch.no_grad():
    model(nchw(torch, x))
  for hook in hooks:
    hook.remove()
  assert inputs
  for pool, h in inputs:
    k, s, p = pool.kernel_size, pool.stride, pool.padding
    padded = torch.nn.functional.pad(h, (p, p, p, p), value=-torch.inf)  # as max_pool2d pads
    windows = padded.unfold(2, k, s).unfold(3, k, s).flatten(-2)  # [N, C, h, w, k * k]
    top = windows.max(-1).values
    tied_at_zero = ((windows == top[..., None]).sum(-1) > 1) & (top == 0)
    assert tied_at_zero.any(), f"no window of zeros ties in {pool} on {tuple(h.shape)}"


@pytest.mark.parametrize(
  "net",
  [
    pytest.param(rn.CNN, id="cnn", marks=pytest.mark.slow),  # four forms, each compiled op by op: about 4 s
    SLOW_RESNET,
    pytest.param(rn.VGG, id="vgg", marks=pytest.mark.slow),
    pytest.param(rn.RELU_MODULES, id="relu_modules"),  # the fast tier's: the smallest, with jnp.maximum(0, x)
  ],
)
def test_jax_forms_attribute_bit_for_bit(net):
  """Linen calling nn.relu, NNX calling nnx.relu and plain jnp.maximum(x, 0) (and, for the CNN, the project's own
  models.CNN with ops.max_pool) give the logits and every method's map to the bit, run op by op: with_rule sees the
  same ReLUs in each. (Under one jit per form they agree to the bit too; op by op, the forms share compiled ops.)"""
  weights, x, labels = case(net)
  forms = rn.jax_forms(net, weights)
  logits = {form: np.asarray(forward(jnp.asarray(x))) for form, forward in forms.items()}
  for method in RULES:
    maps = {
      form: np.asarray(attribution.attribute_fn(selected(f, labels), jnp.asarray(x), method))
      for form, f in forms.items()
    }
    assert np.abs(maps["linen"]).max() > 0, method
    for form in forms:
      np.testing.assert_array_equal(logits[form], logits["linen"], err_msg=f"{form} logits")
      np.testing.assert_array_equal(maps[form], maps["linen"], err_msg=f"{form} {method}")


# ---------------------------------------------------------------- against captum


@pytest.mark.parametrize("method", RULES)
@pytest.mark.parametrize("net", HOOKED)
def test_equals_captum(net, method):
  pytest.importorskip("torch")
  pytest.importorskip("captum")
  weights, x, labels = case(net)
  model = rn.torch_model(net, weights)
  expected = captum_map(model, x, labels, method)
  # The three captum methods differ on these inputs, so a rule that is another method's cannot pass.
  for other in RULES:
    if other != method:
      assert not np.allclose(captum_map(model, x, labels, other), expected, rtol=1e-2, atol=1e-3), other
  forward = rn.jax_forms(net, weights)["linen"]
  ours = attribution.attribute_fn(selected(forward, labels), jnp.asarray(x), method)
  compare(ours, expected, f"{net.name} {method}")


@pytest.mark.parametrize(
  "net, patch, stride, baseline",
  [
    pytest.param(rn.CNN, 4, 4, 0.0, id="cnn-tiling"),
    # (16 - 5) / 3 is not whole: captum's last window starts at 12 and is cut at the edge
    pytest.param(rn.CNN, 5, 3, 0.5, id="cnn-overlapping-cut"),
    pytest.param(rn.VGG, 6, 4, 0.0, id="vgg-overlapping-cut"),  # windows at 0, 4, 8, 12: the last cut at 16
    pytest.param(rn.RESNET18, 8, 6, -0.5, id="resnet18", marks=pytest.mark.slow),
    pytest.param(rn.RELU_MODULES, 3, 3, 0.0, id="relu_modules"),
  ],
)
def test_occlusion_equals_captum(net, patch, stride, baseline):
  """attribution.occlusion is captum's Occlusion with windows (C, patch, patch) and strides (C, stride, stride),
  the cut windows at the border and the mean over the windows that cover a pixel included."""
  torch = pytest.importorskip("torch")
  captum_attr = pytest.importorskip("captum.attr")
  weights, x, labels = case(net)
  c = net.image_shape[2]
  expected = (
    captum_attr.Occlusion(rn.torch_model(net, weights))
    .attribute(
      nchw(torch, x),
      sliding_window_shapes=(c, patch, patch),
      strides=(c, stride, stride),
      baselines=baseline,
      target=torch.from_numpy(labels),
    )
    .numpy()
    .transpose(0, 2, 3, 1)
  )
  forward = rn.jax_forms(net, weights)["linen"]
  ours = attribution.occlusion(selected(forward, labels), jnp.asarray(x), patch=patch, stride=stride, baseline=baseline)
  assert ours.shape == x.shape
  compare(ours, expected, f"{net.name} occlusion(patch={patch},stride={stride},baseline={baseline})")


def test_captum_misses_functional_relus():
  """captum hooks nn.ReLU modules. With F.relu and torch.relu in forward there is nothing to hook: its deconvnet and
  guided backprop are the plain gradient, silently. Made modules, the same network's ReLUs carry the rules, and
  captum equals attribute_fn, which sees the ReLUs of the JAX function however they are written."""
  pytest.importorskip("torch")
  pytest.importorskip("captum")
  weights, x, labels = case(rn.FUNCTIONAL_RELU)
  functional = rn.torch_model(rn.FUNCTIONAL_RELU, weights)
  modules = rn.torch_model(rn.RELU_MODULES, weights)
  forward = rn.jax_forms(rn.FUNCTIONAL_RELU, weights)["linen"]
  gradient = captum_map(functional, x, labels, "saliency")
  for method in ("deconvnet", "guided_backprop"):
    silent = captum_map(functional, x, labels, method)
    np.testing.assert_array_equal(silent, gradient, err_msg=f"captum's {method} of functional ReLUs")
    ours = np.asarray(attribution.attribute_fn(selected(forward, labels), jnp.asarray(x), method))
    assert not np.allclose(ours, silent, rtol=1e-2, atol=1e-3), method
    compare(ours, captum_map(modules, x, labels, method), f"relu_modules(functional in JAX) {method}")
