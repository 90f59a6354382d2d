"""jaxpr_rules and attribution.with_rule: the ReLU rules as a transformation of any JAX function.

The first section pins what `jaxpr_rules` reads from JAX's internals (each test names one): a JAX release that
changes one fails here by name, before anything that uses it fails somewhere else. The rest checks the
transformation by what it must do: each ReLU, wherever it is, carries the rule; nothing else changes; what it
refuses, it refuses in one line that names the line of the user's code.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.extend import core as jex_core

from deconv_jax import attribution, jaxpr_rules, ops

THIS_FILE = __file__


def jaxpr_of(f, *args):
  return jaxpr_rules.trace(f, args, {})[0]


def line_of(marker: str) -> int:
  """The line of this file that holds ``marker``: the source line a site must name."""
  with open(THIS_FILE) as source:
    return next(i for i, text in enumerate(source, 1) if marker in text and "line_of(" not in text)


X = jnp.array([[1.5, -2.0, 0.5], [-0.5, 1.0, -3.0]])


# ---------------------------------------------------------------- what is read from JAX's internals


def test_pin_relu_is_a_custom_jvp_call_of_max_with_zero_and_flax_uses_it():
  assert nn.relu is jax.nn.relu and nnx.relu is jax.nn.relu
  (eqn,) = jaxpr_of(jax.nn.relu, X).jaxpr.eqns
  assert eqn.primitive.name == "custom_jvp_call"
  assert jaxpr_rules._is_relu_call(eqn)
  assert jaxpr_rules._call_name(eqn) == "relu"  # from the call_jaxpr's debug_info.func_src_info


def test_pin_maximum_with_zero_is_one_max_of_a_zero_literal_or_broadcast_zero():
  for f in (lambda x: jnp.maximum(x, 0), lambda x: jnp.maximum(0.0, x), lambda x: jnp.maximum(x, jnp.zeros_like(x))):
    jaxpr = jaxpr_of(f, X).jaxpr
    (eqn,) = [e for e in jaxpr.eqns if e.primitive.name == "max"]
    index = jaxpr_rules._relu_operand(eqn, jaxpr_rules._zeros(jaxpr))
    assert index is not None and eqn.invars[index] is jaxpr.invars[0]
  jaxpr = jaxpr_of(lambda x: jnp.maximum(x, 0.1), X).jaxpr
  assert jaxpr_rules._relu_operand(jaxpr.eqns[-1], jaxpr_rules._zeros(jaxpr)) is None


def test_pin_higher_order_primitives_and_their_parameters():
  def f(x):
    y = jax.jit(lambda z: z * 2)(x)
    y = jax.checkpoint(lambda z: z + 1)(y)
    y, _ = lax.scan(lambda c, a: (c + a, None), y[0], y)
    y = lax.cond(y.sum() > 0, lambda z: z, lambda z: -z, y)
    return lax.while_loop(lambda c: c.sum() < 10, lambda c: c + 1, y)

  params = {e.primitive.name: e.params for e in jaxpr_of(f, X).jaxpr.eqns}
  assert {"jit", "remat2", "scan", "cond", "while"} <= set(params)
  assert isinstance(params["jit"]["jaxpr"], jex_core.ClosedJaxpr) and "name" in params["jit"]
  assert isinstance(params["remat2"]["jaxpr"], jex_core.Jaxpr)
  assert {"prevent_cse", "policy"} <= set(params["remat2"])
  assert {"jaxpr", "num_consts", "num_carry", "length", "reverse", "unroll"} <= set(params["scan"])
  assert all(isinstance(b, jex_core.ClosedJaxpr) for b in params["cond"]["branches"])
  assert {"cond_jaxpr", "body_jaxpr", "cond_nconsts", "body_nconsts"} <= set(params["while"])


def test_pin_custom_vjp_calls_and_max_pool_are_named():
  @jax.custom_vjp
  def opaque(x):
    return x

  opaque.defvjp(lambda x: (x, None), lambda _, g: (g,))
  eqn = jaxpr_of(opaque, X).jaxpr.eqns[0]
  assert eqn.primitive.name == "custom_vjp_call" and jaxpr_rules._call_name(eqn) == "opaque"
  (eqn,) = jaxpr_of(lambda x: ops.max_pool(x, 2), jnp.ones((1, 4, 4, 1))).jaxpr.eqns
  assert jaxpr_rules._call_name(eqn) in jaxpr_rules._POOLING_CALLS


def test_pin_bind_params_of_a_custom_jvp_call_rebind_it():
  (eqn,) = jaxpr_of(jax.nn.relu, X).jaxpr.eqns
  subfuns, params = jaxpr_rules._bind_params(eqn)
  (out,) = eqn.primitive.bind(*subfuns, X, **params)  # a call: a list of outputs
  np.testing.assert_array_equal(out, jax.nn.relu(X))


def test_pin_tracebacks_have_frames_with_file_line_and_function():
  (eqn,) = jaxpr_of(lambda x: x * 2, X).jaxpr.eqns  # pin: traceback frame
  frame = eqn.source_info.traceback.frames[0]
  assert {"file_name", "line_num", "function_name"} <= set(dir(frame))
  assert jaxpr_rules.source_line(eqn).startswith(f"{THIS_FILE}:{line_of('# pin: traceback frame')} ")


def test_pin_flax_normalization_files():
  for module in (nn.LayerNorm(), nn.BatchNorm(use_running_average=False)):
    variables = module.init(jax.random.key(0), X)
    apply = functools.partial(module.apply, variables, mutable=["batch_stats"])
    closed = jaxpr_of(lambda x, apply=apply: apply(x)[0], X)
    maxima = [e for e in closed.jaxpr.eqns if e.primitive.name == "max"]
    assert maxima and all(jaxpr_rules._in_normalization(e) for e in maxima), module


# ---------------------------------------------------------------- every ReLU carries the rule


def deconvnet_grad(f, x):
  return jax.grad(lambda x: attribution.with_rule(f, "deconvnet")(x).sum())(x)


def test_forward_values_are_unchanged_and_the_rule_reaches_every_relu():
  """Through jit, jax.checkpoint, lax.scan, lax.cond, Flax's nn.relu and max(x, 0) in either order: the deconvnet
  passes relu(g) back through a ReLU, so with a negative weight after each one the signal is zero everywhere,
  where the plain gradient is not."""
  weights = jnp.array([1.0, -1.0, 2.0])
  containers = {
    "relu": lambda x: jax.nn.relu(x),
    "flax": lambda x: nn.relu(x),
    "max(x, 0)": lambda x: jnp.maximum(x, 0),
    "max(0, x)": lambda x: jnp.maximum(0, x),
    "jit": jax.jit(jax.nn.relu),
    "jit, max with a zero array": jax.jit(lambda x: jnp.maximum(x, np.zeros(3, np.float32))),
    "checkpoint": jax.checkpoint(jax.nn.relu),
    "scan": lambda x: lax.scan(lambda c, row: (c, jax.nn.relu(row)), 0.0, x)[1],
    "cond": lambda x: lax.cond(x.sum() < 100, jax.nn.relu, lambda z: z, x),
  }
  for name, relu in containers.items():
    f = lambda x, relu=relu: -relu(x * weights)
    np.testing.assert_array_equal(attribution.with_rule(f, "deconvnet")(X), f(X), err_msg=name)
    # d/dx of -relu(w x) under the deconvnet: g = -1 at the ReLU becomes relu(-1) = 0.
    np.testing.assert_array_equal(deconvnet_grad(f, X), jnp.zeros_like(X), err_msg=name)
    assert jnp.abs(jax.grad(lambda x, f=f: f(x).sum())(X)).sum() > 0, name
    # and with a positive signal each rule is what it says, element by element.
    g = lambda x, relu=relu: relu(x * weights)
    for method, expected in [
      ("saliency", weights * (X * weights > 0)),
      ("deconvnet", jnp.broadcast_to(weights, X.shape)),
      ("guided_backprop", weights * (X * weights > 0)),
    ]:
      got = jax.grad(lambda x, g=g, m=method: attribution.with_rule(g, m)(x).sum())(X)
      np.testing.assert_array_equal(got, expected, err_msg=f"{name} {method}")


def test_composes_with_jit_and_vmap_and_takes_pytrees():
  def f(tree, scale=1.0):
    return {"out": jax.nn.relu(tree["a"] * scale) - tree["b"]}

  tree = {"a": X, "b": X[::-1]}
  rewritten = attribution.with_rule(f, "guided_backprop")
  eager = jax.grad(lambda t: rewritten(t, scale=2.0)["out"].sum())(tree)
  jitted = jax.jit(jax.grad(lambda t: rewritten(t, scale=2.0)["out"].sum()))(tree)
  jax.tree.map(np.testing.assert_array_equal, eager, jitted)
  per_example = jax.vmap(jax.grad(lambda t: rewritten(t, scale=2.0)["out"].sum()))(tree)
  jax.tree.map(np.testing.assert_array_equal, per_example, eager)


def test_max_pooling_keeps_its_own_vjp():
  x = jnp.array([[1.0, 1.0, -2.0, 0.0], [0.5, -1.0, 3.0, 3.0]]).reshape(1, 2, 4, 1)
  for pool in (lambda h: ops.max_pool(h, 2), lambda h: nn.max_pool(h, (2, 2), (2, 2))):
    f = lambda x, pool=pool: pool(jax.nn.relu(x)).sum()
    got = jax.grad(attribution.with_rule(f, "saliency"))(x)
    np.testing.assert_array_equal(got, jax.grad(f)(x))
    assert got.sum() == 2  # one location per window, ties included


# ---------------------------------------------------------------- sites and refusals


def test_relu_sites_lists_each_site_with_its_line():
  def f(x):
    h = jax.nn.relu(x)  # site: relu
    h = jnp.maximum(0.0, h - 1)  # site: maximum
    h = ops.max_pool(h.reshape(1, 2, 3, 1), (1, 3))  # site: pool
    return jnp.tanh(h)  # site: tanh

  sites = attribution.relu_sites(f, X)
  got = [(s.kind, s.name, s.where) for s in sites]
  where = lambda marker: f"{THIS_FILE}:{line_of(marker)} (test_relu_sites_lists_each_site_with_its_line.<locals>.f)"
  assert got == [
    ("relu", "relu", where("# site: relu")),
    ("relu", "maximum(x, 0)", where("# site: maximum")),
    ("pooling", "max_pool", where("# site: pool")),
    ("nonlinearity", "tanh", where("# site: tanh")),
  ]


def test_other_nonlinearities_are_refused_by_name_and_line_unless_kept():
  @jax.custom_vjp
  def hidden_relu(x):
    return jax.nn.relu(x)

  hidden_relu.defvjp(lambda x: (hidden_relu(x), x), lambda x, g: (g * (x > 0),))
  for name, activation in [
    ("gelu", jax.nn.gelu),
    ("leaky_relu", jax.nn.leaky_relu),
    ("relu6", jax.nn.relu6),
    ("silu", jax.nn.silu),
    ("hidden_relu", hidden_relu),
  ]:

    def model(x, activation=activation):
      return activation(jax.nn.relu(x) - 1)  # refused here

    expected = f"{name} at {re.escape(THIS_FILE)}:{line_of('# refused here')} "
    for method in ("deconvnet", "guided_backprop"):
      with pytest.raises(
        ValueError, match=f"^method='{method}' is defined for ReLU networks; model also has {expected}"
      ):
        attribution.attribute_fn(model, X, method)
      kept = attribution.attribute_fn(model, X, method, others="keep")  # the other one with its own derivative
      assert kept.shape == X.shape
    # saliency is the plain gradient of anything
    np.testing.assert_array_equal(attribution.attribute_fn(model, X), jax.grad(lambda x: model(x).sum())(X))


def test_no_relu_and_batch_statistics_are_refused():
  with pytest.raises(ValueError, match=r"^method='deconvnet' needs a ReLU network: <lambda> has no ReLU on the path"):
    attribution.attribute_fn(lambda x: 2 * x, X, "deconvnet")
  norm = nn.BatchNorm()
  variables = norm.init(jax.random.key(0), X, use_running_average=False)
  train_mode = lambda x: jax.nn.relu(norm.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0])
  for method in attribution.RULES:
    with pytest.raises(ValueError, match=r"^<lambda> mixes the examples of a batch \(a statistic over the batch"):
      attribution.attribute_fn(train_mode, X, method)
  # In eval mode the statistics are constants: each example is its own, and nothing is refused.
  eval_mode = lambda x: jax.nn.relu(norm.apply(variables, x, use_running_average=True))
  assert attribution.attribute_fn(eval_mode, X, "deconvnet").shape == X.shape


def test_the_max_of_a_normalization_is_not_a_relu():
  norm = nn.LayerNorm()
  variables = norm.init(jax.random.key(0), X)
  weights = jnp.array([3.0, 1.0, 0.5])  # unequal, so that the signal reaching the variance is not zero
  f = lambda x: jax.nn.relu(norm.apply(variables, x)) * weights
  kinds = [s.kind for s in attribution.relu_sites(f, X)]
  assert kinds.count("relu") == 1 and "normalization" in kinds
  # The variance's max(0, v) keeps its derivative: with positive weights the deconvnet passes them through the ReLU
  # whatever its mask, and the rest is the plain gradient of the normalization.
  got = attribution.attribute_fn(f, X, "deconvnet")
  np.testing.assert_allclose(got, jax.grad(lambda x: (norm.apply(variables, x) * weights).sum())(X), atol=1e-6)


def test_with_rule_refuses_unknown_methods_and_options():
  with pytest.raises(ValueError, match=r"^method='gradcam' is not allowed: one of \('saliency', 'deconvnet', 'gui"):
    attribution.with_rule(jax.nn.relu, "gradcam")
  with pytest.raises(ValueError, match=r"^others='ignore' is not allowed: one of \('refuse', 'keep'\)$"):
    attribution.with_rule(jax.nn.relu, "deconvnet", others="ignore")
  with pytest.raises(ValueError, match=r"^seed='zeros' is not allowed: 'ones' or 'values'$"):
    attribution.attribute_fn(jax.nn.relu, X, "deconvnet", seed="zeros")
