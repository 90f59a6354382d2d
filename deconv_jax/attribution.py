"""Saliency, deconvnet and guided backprop: one VJP of the forward pass, three ReLU rules; and occlusion.

Zeiler & Fergus's deconvnet projects an activation back to pixels through the
network's own filters, transposed. That is not a second network: the transposed
filters are the VJP of the convolutions (`ops.deconv2d`), and unpooling with
switches is the VJP of max pooling (`ops.unpool_with_switches`): one switch per
window, its first maximum in row-major order, ties included, so saliency is
PyTorch's gradient and the deconvnet PyTorch's (captum's) on the same weights.
The three methods run the same `jax.vjp` and differ only in how the backward
signal ``g`` crosses a ReLU whose input was ``x``:

=================  ==========================  ==============================
method             backward rule               source
=================  ==========================  ==============================
``saliency``       ``g * (x > 0)``             the plain gradient (Simonyan et al. 2014)
``deconvnet``      ``relu(g)``                 Zeiler & Fergus 2014: no forward mask
``guided_backprop``  ``relu(g) * (x > 0)``     Springenberg et al. 2015: both
=================  ==========================  ==============================

The rule is a property of the function, not of a model library: `with_rule`
finds every ReLU in a function's jaxpr (`jaxpr_rules`) and gives it the rule, so
`attribute_fn` works on any JAX function (a Linen or NNX module, a plain function
of arrays). For a Linen module, `attribute` takes a *target* that picks what to
project from the forward pass's named activations (`activations`): a logit, a
whole feature map, one channel, one unit, or the strongest unit of a channel.
Targets are per example (``[N, ...]``), so one example's result never depends
on the rest of the batch.

Occlusion (Zeiler & Fergus, Fig. 7) is a method of another kind, with no
backward pass: `occlusion` blanks one patch at a time and records how much the
target drops. `METHODS` lists every method, `RULES` the three ReLU rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax import lax
from tqdm.auto import tqdm

from deconv_jax import jaxpr_rules, progress
from deconv_jax.ops.shapes import as_pair

Target = Callable[[dict[str, jax.Array]], jax.Array]
RULES = ("saliency", "deconvnet", "guided_backprop")  # one VJP each, differing at the ReLUs
METHODS = (*RULES, "occlusion")  # what `attribute_fn` computes, and the figures draw, in this order
# One line each, for figures and notebooks.
DESCRIPTIONS = {
  "saliency": "the plain gradient",
  "deconvnet": "relu(g) at each ReLU, no forward mask",
  "guided_backprop": "relu(g) * (x > 0) at each ReLU",
  "occlusion": "the target's drop when a patch is blanked",
}

_BACKWARD_RULES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
  "saliency": lambda active, g: g * active,
  "deconvnet": lambda active, g: jnp.maximum(g, 0),
  "guided_backprop": lambda active, g: jnp.maximum(g, 0) * active,
}


def _relu_with_rule(method: str) -> Callable[[jax.Array], jax.Array]:
  backward = _BACKWARD_RULES[method]

  def relu(x):
    return jnp.maximum(x, 0)

  def fwd(x):
    return jnp.maximum(x, 0), x > 0

  def bwd(active, g):
    return (backward(active.astype(g.dtype), g),)

  # Named before custom_vjp wraps it: a jaxpr of an attribution then says which rule each ReLU runs.
  relu.__name__ = relu.__qualname__ = f"relu_{method}"
  relu = jax.custom_vjp(relu)
  relu.defvjp(fwd, bwd)
  return relu


RELU_RULES: dict[str, Callable[[jax.Array], jax.Array]] = {m: _relu_with_rule(m) for m in RULES}


def _check_method(method: str, allowed: tuple[str, ...] = RULES) -> None:
  if method not in allowed:
    raise ValueError(f"method={method!r} is not allowed: one of {allowed}")


_OTHERS = ("refuse", "keep")


def _check_sites(sites: list[jaxpr_rules.Site], method: str, others: str, name: str) -> None:
  """Refusals of `with_rule`, in one line: examples coupled, no ReLU, or another non-linearity."""

  def listed(kind):
    shown = [f"{s.name} at {s.where}" for s in sites if s.kind == kind]
    return "; ".join(shown[:3]) + (f"; and {len(shown) - 3} more" if len(shown) > 3 else "")

  if any(s.kind == jaxpr_rules.COUPLING for s in sites):
    raise ValueError(
      f"{name} mixes the examples of a batch ({listed(jaxpr_rules.COUPLING)}): use BatchNorm in eval mode "
      "(use_running_average=True) so that each example's map is its own"
    )
  if method == "saliency":
    return
  if not any(s.kind == jaxpr_rules.RELU for s in sites):
    also = (
      f"; it has {listed(jaxpr_rules.NONLINEARITY)}" if any(s.kind == jaxpr_rules.NONLINEARITY for s in sites) else ""
    )
    raise ValueError(f"method={method!r} needs a ReLU network: {name} has no ReLU on the path from its inputs{also}")
  if others == "refuse" and any(s.kind == jaxpr_rules.NONLINEARITY for s in sites):
    raise ValueError(
      f"method={method!r} is defined for ReLU networks; {name} also has {listed(jaxpr_rules.NONLINEARITY)} "
      "(others='keep' leaves those with their own derivative)"
    )


def with_rule(f: Callable, method: str, *, others: str = "refuse") -> Callable:
  """``f`` with every ReLU on its path carrying ``method``'s backward rule; nothing else changes.

  ``f`` is any JAX-traceable function of arrays and pytrees (a Linen ``apply``, an NNX module, a plain function),
  with non-array options bound beforehand (``functools.partial``). Its ReLUs are found in its jaxpr
  (`jaxpr_rules`): ``jax.nn.relu`` (Flax's ``nn.relu``, ``nnx.relu``) and ``jnp.maximum(x, 0)`` in either order,
  inside ``jit``, ``jax.checkpoint``, ``lax.scan`` and ``lax.cond`` too. The forward values are ``f``'s own; the
  result composes with ``jax.jit``, ``jax.vmap`` and ``jax.vjp``. Max pooling keeps its own VJP (one location per
  window), as do normalization layers.

  Deconvnet and guided backprop are defined for ReLU networks: a path with no ReLU, or with another non-linearity
  (GELU, leaky ReLU, ReLU6, a ReLU inside someone's ``custom_vjp``), is a ValueError naming it and its line, unless
  ``others="keep"`` leaves those with their own derivative. Saliency is the plain gradient of any function. A
  statistic over the batch (BatchNorm in training mode) is refused for every method.
  """
  _check_method(method)
  if others not in _OTHERS:
    raise ValueError(f"others={others!r} is not allowed: one of {_OTHERS}")
  relu = RELU_RULES[method]
  name = getattr(f, "__name__", type(f).__name__)

  @functools.wraps(f)
  def f_with_rule(*args, **kwargs):
    closed, out_tree, flat = jaxpr_rules.trace(f, args, kwargs)
    _check_sites(jaxpr_rules.sites(closed), method, others, name)
    return jax.tree.unflatten(out_tree, jaxpr_rules.evaluate(closed, flat, relu))

  return f_with_rule


def relu_sites(f: Callable, *args, **kwargs) -> list[jaxpr_rules.Site]:
  """What `with_rule` sees in ``f(*args, **kwargs)``: each ReLU it rewrites and each pooling, normalization and other
  non-linearity on the path that it does not, in order, with its source line (``print(*sites, sep="\n")``)."""
  closed, _, _ = jaxpr_rules.trace(f, args, kwargs)
  return jaxpr_rules.sites(closed)


def attribute_fn(
  f: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  method: str = "saliency",
  *,
  seed: str = "ones",
  others: str = "refuse",
) -> jax.Array:
  """Attributes ``f(x)`` to the pixels of ``x`` by ``method``: an array shaped like ``x``.

  ``f`` returns the target, for example one logit per example (``lambda x: model(x)[jnp.arange(n), labels]``).
  For the ReLU rules (`RULES`) it is the VJP of ``with_rule(f, method)`` at ``x``, seeded with ``ones`` (for
  saliency: the gradient of the targets' sum) or with the target's own ``values`` (Zeiler & Fergus feed the
  activations themselves into the deconvnet); every rule is positively homogeneous, so the two seeds differ by a
  positive factor per example when the target is a single unit. ``"occlusion"`` is `occlusion` of each example's
  target summed, with `occlusion_patch`'s patch and stride for the image size (``seed`` and ``others`` are the
  rules' options: occlusion has no backward pass).
  """
  _check_method(method, METHODS)
  if seed not in ("ones", "values"):
    raise ValueError(f"seed={seed!r} is not allowed: 'ones' or 'values'")
  if method == "occlusion":
    patch, stride = occlusion_patch(x.shape[1:3])
    return occlusion(lambda v: _per_example_sum(f(v)), x, patch=patch, stride=stride)
  selected, vjp = jax.vjp(with_rule(f, method, others=others), x)
  (projection,) = vjp(jnp.ones_like(selected) if seed == "ones" else jax.lax.stop_gradient(selected))
  return projection


def _per_example_sum(target: jax.Array) -> jax.Array:
  return target.reshape(target.shape[0], -1).sum(axis=1)


# ---------------------------------------------------------------- occlusion


def occlusion_patch(image_hw: Sequence[int]) -> tuple[int, int]:
  """The default patch and stride: a seventh of the image's shorter side (4 on 28x28 digits), at half its size."""
  patch = max(1, min(image_hw) // 7)
  return patch, max(1, patch // 2)


def occlusion(
  f: Callable[[jax.Array], jax.Array],
  x: jax.Array,
  *,
  patch: int | Sequence[int],
  stride: int | Sequence[int],
  baseline: float | jax.Array = 0.0,
  batch_size: int = 32,
) -> jax.Array:
  """Zeiler & Fergus's occlusion (2014, Fig. 7): how much ``f`` drops when a patch of ``x`` is blanked.

  x ``[N, H, W, C]``; f returns one value per example, ``[N]``. A ``patch`` (all channels) slides over the image
  at ``stride``, the last one cut at the border; each pixel gets the mean of ``f(x) - f(x blanked to baseline)``
  over the patches that cover it, so the result is shaped like ``x``. The same as captum's ``Occlusion`` with
  windows ``(C, *patch)`` and strides ``(C, *stride)``. The patches run ``batch_size`` at a time in one compiled
  call (``vmap``), with a progress bar when there is more than one batch and someone is watching; under ``jit``
  all of them run in one ``lax.map``.
  """
  if x.ndim != 4:
    raise ValueError(f"x must be [N, H, W, C], got shape {x.shape}")
  n, h, w, _ = x.shape
  (ph, pw), (sh, sw) = as_pair(patch, "patch"), as_pair(stride, "stride")
  if ph > h or pw > w:
    raise ValueError(f"patch {(ph, pw)} is larger than the {h}x{w} image")
  if (sh > ph and ph < h) or (sw > pw and pw < w):
    raise ValueError(f"stride {(sh, sw)} is larger than patch {(ph, pw)}: pixels between patches would never count")
  rows = range(0, sh * -(-(h - ph) // sh) + 1, sh)
  cols = range(0, sw * -(-(w - pw) // sw) + 1, sw)
  masks = np.zeros((len(rows) * len(cols), h, w), np.float32)
  for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
    masks[k, r : r + ph, c : c + pw] = 1
  reference = f(x)
  if reference.shape != (n,):
    raise ValueError(f"f must return one value per example, shape ({n},), got {reference.shape}")

  def drop(mask_HW, x, reference):  # [H, W] -> [N]
    m = mask_HW[None, :, :, None].astype(x.dtype)
    return reference - f(x * (1 - m) + baseline * m)

  if isinstance(x, jax.core.Tracer):
    drops_KN = lax.map(lambda m: drop(m, x, reference), jnp.asarray(masks), batch_size=batch_size)
  else:
    drops = jax.vmap(drop, in_axes=(0, None, None))
    batches = -(-len(masks) // batch_size)
    padded = np.concatenate([masks, np.zeros((batches * batch_size - len(masks), h, w), np.float32)])
    step = jax.jit(drops)  # one compile: every batch of patches has the same shape
    show = batches > 1 and progress.interactive()
    parts = [
      step(padded[i * batch_size : (i + 1) * batch_size], x, reference)
      for i in tqdm(range(batches), desc="occlusion", unit="batch", disable=not show)
    ]
    drops_KN = jnp.concatenate(parts)[: len(masks)]
  counts_HW = masks.sum(axis=0)
  attribution_NHW = jnp.einsum("kn,khw->nhw", drops_KN, jnp.asarray(masks)) / counts_HW
  return jnp.broadcast_to(attribution_NHW[..., None], x.shape).astype(x.dtype)


def activations(
  module: nn.Module, variables: Any, images: jax.Array, *, submodules: bool = True
) -> dict[str, jax.Array]:
  """Every named activation of ``module`` on ``images``, ``{name: [N, ...]}``, in the order the module computes them.

  Values sown into ``"intermediates"`` keep their names (our CNN's ``act1``, ``pool1``, ...,
  ``hidden1``, ``logits``). With ``submodules`` (for any module, ours or not), also ``"output"``, what
  the module returns, and the output of each submodule under its path (``conv1``, ``dense1``: before the
  activation); without, the sown values alone.
  """
  output, state = module.apply(variables, images, mutable=["intermediates"], capture_intermediates=submodules)
  named = {"output": output} if submodules else {}
  for path, value in traverse_util.flatten_dict(state["intermediates"]).items():
    if path == ("__call__",):
      continue
    name = "/".join(path[:-1]) if path[-1] == "__call__" else "/".join(path)
    named[name] = value[-1]
  return named


def attribute(
  module: nn.Module,
  variables: Any,
  images: jax.Array,
  target: Target,
  method: str = "saliency",
  *,
  seed: str = "ones",
  others: str = "refuse",
) -> jax.Array:
  """Projects ``target`` back to pixel space under ``method``'s ReLU rule: images ``[N, H, W, C]`` -> same shape.

  `attribute_fn` of ``images -> target(activations(images))``: the target picks from the module's named
  activations (a logit, a feature map, a channel, a unit).
  """

  def selected(x):
    return target(activations(module, variables, x))

  selected.__name__ = type(module).__name__  # what an error names
  return attribute_fn(selected, images, method, seed=seed, others=others)


# ---------------------------------------------------------------- targets


def _per_example(index: int | jax.Array, n: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(index, jnp.int32), (n,))


def logit(labels: int | jax.Array, name: str = "output") -> Target:
  """The logit of class ``labels`` (one int, or ``[N]``) of activation ``name`` ``[N, K]``: ``[N]``."""

  def target(acts):
    logits_NK = acts[name]
    return jnp.take_along_axis(logits_NK, _per_example(labels, logits_NK.shape[0])[:, None], axis=1)[:, 0]

  return target


def layer(name: str) -> Target:
  """The whole activation ``name`` (e.g. a feature map ``[N, H, W, C]``)."""
  return lambda acts: acts[name]


def channel(name: str, c: int | jax.Array) -> Target:
  """Channel ``c`` (one int, or ``[N]``) of feature map ``name``: ``[N, H, W]``."""

  def target(acts):
    x_NHWC = acts[name]
    c_N = _per_example(c, x_NHWC.shape[0])
    return jnp.take_along_axis(x_NHWC, c_N[:, None, None, None], axis=3)[..., 0]

  return target


def unit(name: str, index: Sequence[int]) -> Target:
  """The single unit ``index`` = ``(i, j, c)`` of feature map ``name`` (or ``(k,)`` of a vector): ``[N]``."""
  return lambda acts: acts[name][(slice(None), *index)]


def strongest(name: str, c: int | jax.Array) -> Target:
  """Channel ``c`` of ``name`` with every unit but its maximum zeroed (Zeiler & Fergus): ``[N, H, W]``.

  The maximum's position is a constant of the target (first maximum in row-major
  order), so the projection starts from that one unit alone.
  """
  select = channel(name, c)

  def target(acts):
    x_NHW = select(acts)
    n, h, w = x_NHW.shape
    at_max = jax.nn.one_hot(jnp.argmax(x_NHW.reshape(n, h * w), axis=1), h * w, dtype=x_NHW.dtype)
    return x_NHW * jax.lax.stop_gradient(at_max.reshape(n, h, w))

  return target


def argmax_position(x_NHW: jax.Array) -> jax.Array:
  """``[N, 2]`` (row, column) of each example's maximum, the unit `strongest` keeps."""
  n, h, w = x_NHW.shape
  flat = jnp.argmax(x_NHW.reshape(n, h * w), axis=1)
  return jnp.stack([flat // w, flat % w], axis=1)
