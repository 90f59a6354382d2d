"""Every ReLU of a JAX function, found in its jaxpr and replaced: the one module that reads JAX's internals.

A function's jaxpr lists every primitive its outputs are computed with, through ``jit``, ``jax.checkpoint``,
``lax.scan``, ``lax.cond`` and ``lax.while_loop``, whatever library wrote it (Flax Linen or NNX, or plain ``jnp``).
A ReLU there is ``jax.nn.relu`` (a ``custom_jvp_call`` around ``max(x, 0)``; Flax's ``nn.relu`` and ``nnx.relu`` are
that function) or a bare ``max`` of a value and a zero, in either order. `evaluate` runs a jaxpr again with each ReLU
replaced by another function; `sites` lists them, with the other non-linearities on the path from the inputs and
each one's source line.

The jaxpr's structure (equations, ``Literal`` and ``Var``, the parameters of the higher-order primitives, the
tracebacks of ``source_info``) is JAX's own and moves between releases: nothing else in the project touches it, and
``tests/test_jaxpr_rules.py`` pins each part relied on, so that a JAX release that changes one fails there by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jex_core

# Site kinds.
RELU = "relu"  # replaced by `evaluate`
POOLING = "pooling"  # max pooling: kept, with its own VJP (one location per window)
NORMALIZATION = "normalization"  # max(0, variance) and the rest of a normalization layer: kept
NONLINEARITY = "nonlinearity"  # anything else that is not linear in the inputs: kept, or refused by the caller
COUPLING = "coupling"  # a statistic over the batch axis (BatchNorm in training mode): the examples are not separable

# Primitives that are not linear in an operand on the path. `max` and `select_n` are judged per equation below.
_NONLINEAR = frozenset(
  [
    "logistic",
    "tanh",
    "erf",
    "erfc",
    "erf_inv",
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "abs",
    "sign",
    "integer_pow",
    "pow",
    "sqrt",
    "rsqrt",
    "cbrt",
    "square",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "asinh",
    "acosh",
    "atanh",
    "floor",
    "ceil",
    "round",
    "clamp",
    "min",
    "rem",
    "sort",
    "cumlogsumexp",
    "cummax",
    "cummin",
    "reduce_min",
    "reduce_window_min",
    "reduce_prod",
  ]
)
_POOLING = frozenset({"reduce_window_max", "reduce_max"})
_POOLING_CALLS = frozenset({"_max_pool_views"})  # deconv_jax.ops.max_pool's custom_jvp: first maximum per window
# Source files of the libraries whose frames are not the user's line.
_LIBRARY_DIRS = ("/jax/", "/jaxlib/", "/flax/", "/numpy/", "/optax/", "/equinox/", "/haiku/", "/deconv_jax/ops/")
# Where the functions a user calls by name live: jax.nn, jax.numpy, jax.lax.
_NAMED_DIRS = ("jax/_src/nn/", "jax/_src/numpy/", "jax/_src/lax/")
_NORMALIZATION_FILES = ("flax/linen/normalization.py", "flax/nnx/nn/normalization.py")


@dataclasses.dataclass(frozen=True)
class Site:
  """One equation of the path: its kind, what it is (``relu``, ``gelu``, ``maximum``, ...) and the user's line."""

  kind: str
  name: str
  where: str

  def __str__(self) -> str:
    return f"{self.kind:13s} {self.name:20s} {self.where}"


# ---------------------------------------------------------------- tracing


def trace(f: Callable, args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[jex_core.ClosedJaxpr, Any, list]:
  """``f(*args, **kwargs)`` as a closed jaxpr of the flat leaves, with its output treedef and the flat inputs."""
  flat, in_tree = jax.tree.flatten((tuple(args), kwargs))

  def flat_f(*leaves):
    a, k = jax.tree.unflatten(in_tree, leaves)
    return f(*a, **k)

  closed, out_shape = jax.make_jaxpr(flat_f, return_shape=True)(*flat)
  return closed, jax.tree.structure(out_shape), flat


# ---------------------------------------------------------------- reading equations


def _frames(eqn) -> list:
  traceback = getattr(eqn.source_info, "traceback", None)
  return list(traceback.frames) if traceback is not None else []  # innermost first


def _is_library(file_name: str) -> bool:
  return any(d in file_name for d in _LIBRARY_DIRS) or file_name.endswith(
    ("deconv_jax/jaxpr_rules.py", "deconv_jax/attribution.py")
  )


def source_line(eqn) -> str | None:
  """``file:line (function)`` of the innermost frame outside JAX, Flax, NumPy and this module, if any."""
  for frame in _frames(eqn):
    if not _is_library(frame.file_name):
      return f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
  return None


def _library_name(eqn) -> str | None:
  """The public JAX function the user's line called (``gelu``, ``tanh``, ``maximum``), or Flax's normalization."""
  named = None
  for frame in _frames(eqn):  # innermost first: the last match is the outermost
    if not _is_library(frame.file_name):
      break
    function = frame.function_name.split(".")
    if any(d in frame.file_name for d in _NAMED_DIRS) and not function[-1].startswith("_"):
      named = function[-1]
    elif frame.file_name.endswith(_NORMALIZATION_FILES) and function[-1] == "__call__" and len(function) > 1:
      named = function[-2]
  return named


def _in_normalization(eqn) -> bool:
  return any(frame.file_name.endswith(_NORMALIZATION_FILES) for frame in _frames(eqn))


def _call_name(eqn) -> str:
  """The name of the function a ``custom_jvp_call`` / ``custom_vjp_call`` wraps (``relu6``, ``_max_pool_views``)."""
  debug = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
  info = getattr(debug, "func_src_info", None) or ""
  return info.split(" ")[0] if info else eqn.primitive.name


def _inner_jaxpr(eqn):
  """A call's own jaxpr, open: that of ``jit`` and the custom-derivative calls (closed) and of ``remat2`` (open)."""
  inner = eqn.params.get("call_jaxpr", eqn.params.get("jaxpr"))
  return inner.jaxpr if isinstance(inner, jex_core.ClosedJaxpr) else inner


def _is_zero_literal(v) -> bool:
  return isinstance(v, jex_core.Literal) and np.ndim(v.val) == 0 and v.val == 0


def _zeros(jaxpr, consts: Sequence[Any] = ()) -> set:
  """The variables of ``jaxpr`` that are zero whatever the inputs: zero literals broadcast, reshaped or cast."""
  zeros = set()
  for var, value in zip(jaxpr.constvars, consts):
    if not isinstance(value, jax.core.Tracer) and np.size(value) and not np.any(np.asarray(value)):
      zeros.add(var)
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("broadcast_in_dim", "convert_element_type", "reshape", "copy"):
      (operand, *_) = eqn.invars
      if _is_zero_literal(operand) or (isinstance(operand, jex_core.Var) and operand in zeros):
        zeros.add(eqn.outvars[0])
  return zeros


def _relu_operand(eqn, zeros: set) -> int | None:
  """For ``max(x, 0)`` or ``max(0, x)``: the index of ``x``; otherwise None."""
  if eqn.primitive.name != "max":
    return None
  zero = [_is_zero_literal(v) or (isinstance(v, jex_core.Var) and v in zeros) for v in eqn.invars]
  return zero.index(False) if zero.count(True) == 1 else None


def _is_relu_call(eqn) -> bool:
  """``jax.nn.relu``: a ``custom_jvp_call`` whose jaxpr, through ``jit``s, is one ``max`` of its input and 0."""
  if eqn.primitive.name != "custom_jvp_call" or len(eqn.invars) != 1:
    return False
  jaxpr = _inner_jaxpr(eqn)
  while len(jaxpr.eqns) == 1 and jaxpr.eqns[0].primitive.name == "jit":
    jaxpr = _inner_jaxpr(jaxpr.eqns[0])
  if len(jaxpr.eqns) != 1 or len(jaxpr.invars) != 1:
    return False
  (only,) = jaxpr.eqns
  index = _relu_operand(only, _zeros(jaxpr))
  return index is not None and only.invars[index] is jaxpr.invars[0] and only.outvars == jaxpr.outvars


# ---------------------------------------------------------------- sites


def sites(closed: jex_core.ClosedJaxpr) -> list[Site]:
  """Every ReLU, pooling, normalization and other non-linearity on the path from the jaxpr's inputs, in order."""
  found: dict[tuple, Site] = {}
  _walk(closed.jaxpr, [True] * len(closed.jaxpr.invars), found, closed.consts)
  # Each ReLU and pooling is a site of its own (a block called twice has two); one non-linearity of another kind
  # is several equations (a GELU's cube and tanh), listed once per name and line.
  sites, seen = [], set()
  for site in found.values():
    if site.kind in (RELU, POOLING) or site not in seen:
      sites.append(site)
      seen.add(site)
  return sites


@dataclasses.dataclass(frozen=True)
class _Context:
  """Where the call that holds a jaxpr was made, for equations whose own traceback has no user frame (those of a
  ``jit``'s cached trace, or a branch that is a JAX function itself), and the name of the ``jit`` it is in."""

  where: str = "(no source line)"
  called: str | None = None

  def inside(self, eqn) -> _Context:
    name = eqn.params.get("name") if eqn.primitive.name == "jit" else None
    called = name if name and not name.startswith("_") else self.called
    return _Context(source_line(eqn) or self.where, called)


def _walk(jaxpr, on_path: Sequence[bool], found: dict, consts: Sequence[Any] = (), ctx: _Context = _Context()):
  """Marks which variables depend on the inputs (``on_path``), records the sites among them, returns the outputs'."""
  path = {v for v, p in zip(jaxpr.invars, on_path) if p}
  zeros = _zeros(jaxpr, consts)

  def record(eqn, kind, name):
    found.setdefault((id(eqn), kind), Site(kind, name, source_line(eqn) or ctx.where))

  for eqn in jaxpr.eqns:
    flags = [isinstance(v, jex_core.Var) and v in path for v in eqn.invars]
    name = eqn.primitive.name
    outs = [any(flags)] * len(eqn.outvars)
    if not any(flags) or name == "stop_gradient":
      outs = [False] * len(eqn.outvars)
    elif _is_relu_call(eqn):
      record(eqn, RELU, "relu")
    elif name in ("custom_jvp_call", "custom_vjp_call"):
      call = _call_name(eqn)
      if call in _POOLING_CALLS:
        record(eqn, POOLING, "max_pool")
      else:
        inner: dict = {}
        _walk(_inner_jaxpr(eqn), flags, inner, ctx=ctx.inside(eqn))
        if any(site.kind in (RELU, NONLINEARITY, POOLING) for site in inner.values()):
          # Its own derivative rule runs, whatever is inside: a ReLU there cannot carry another rule.
          record(eqn, NONLINEARITY, call)
    elif name in ("jit", "remat2"):
      consts = eqn.params["jaxpr"].consts if name == "jit" else ()  # a jit's constants: a zero array may be one
      outs = _walk(_inner_jaxpr(eqn), flags, found, consts, ctx.inside(eqn))
    elif name == "scan":
      p = eqn.params
      outs = _walk_loop(p["jaxpr"], p["num_consts"], p["num_carry"], flags, found, ctx.inside(eqn))
    elif name == "while":
      p = eqn.params
      n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
      body_flags = flags[n_cond : n_cond + n_body] + flags[n_cond + n_body :]
      outs = _walk_loop(p["body_jaxpr"], n_body, len(eqn.outvars), body_flags, found, ctx.inside(eqn))
    elif name == "cond":
      branch_outs = [
        _walk(branch.jaxpr, flags[1:], found, branch.consts, ctx.inside(eqn)) for branch in eqn.params["branches"]
      ]
      outs = [any(column) for column in zip(*branch_outs)]
    elif _in_normalization(eqn):
      axes = eqn.params.get("axes", ())
      if name.startswith("reduce_") and 0 in axes:
        record(eqn, COUPLING, "a statistic over the batch axis (BatchNorm in training mode?)")
      elif name in _NONLINEAR or name == "max":
        record(eqn, NORMALIZATION, _library_name(eqn) or "normalization")
    elif _relu_operand(eqn, zeros) is not None:
      record(eqn, RELU, "maximum(x, 0)")
    elif name in _POOLING:
      record(eqn, POOLING, name)
    elif name in _NONLINEAR or name == "max" or (name == "select_n" and flags[0]) or (name == "div" and flags[1]):
      record(eqn, NONLINEARITY, ctx.called or _library_name(eqn) or name)
    path.update(v for v, p in zip(eqn.outvars, outs) if p)
  return [isinstance(v, jex_core.Var) and v in path for v in jaxpr.outvars]


def _walk_loop(body, n_consts: int, n_carry: int, flags: list[bool], found: dict, ctx: _Context) -> list[bool]:
  """A loop body's path, to a fixed point: a carry on the path stays on it in the next iteration."""
  flags = list(flags)
  while True:
    outs = _walk(body.jaxpr, flags, found, body.consts, ctx)
    carry = [a or b for a, b in zip(flags[n_consts : n_consts + n_carry], outs[:n_carry])]
    if carry == flags[n_consts : n_consts + n_carry]:
      return outs
    flags[n_consts : n_consts + n_carry] = carry


# ---------------------------------------------------------------- evaluation with the ReLUs replaced


def evaluate(closed: jex_core.ClosedJaxpr, args: Sequence[Any], relu: Callable[[jax.Array], jax.Array]) -> list:
  """The jaxpr's outputs on ``args`` with every ReLU replaced by ``relu``; every other equation binds as it is.

  ``jit`` calls are inlined (under an outer ``jit`` that compiles the same); ``jax.checkpoint``, ``lax.scan``,
  ``lax.cond`` and ``lax.while_loop`` are called again, with their bodies evaluated the same way.
  """
  return _evaluate(closed.jaxpr, closed.consts, args, relu)


def _evaluate(jaxpr, consts: Sequence[Any], args: Sequence[Any], relu: Callable) -> list:
  env: dict = {}
  zeros = _zeros(jaxpr, consts)

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    outs = _evaluate_eqn(eqn, invals, zeros, relu)
    env.update(zip(eqn.outvars, outs))  # a dropped output (`_`) is written too, and never read
  return [read(v) for v in jaxpr.outvars]


def _evaluate_eqn(eqn, invals: list, zeros: set, relu: Callable) -> list:
  name, p = eqn.primitive.name, eqn.params
  if _is_relu_call(eqn):
    return [relu(invals[0])]
  index = _relu_operand(eqn, zeros)
  if index is not None and not _in_normalization(eqn):
    aval = eqn.outvars[0].aval
    return [jnp.broadcast_to(relu(jnp.asarray(invals[index], aval.dtype)), aval.shape)]
  if name == "jit":
    return _evaluate(p["jaxpr"].jaxpr, p["jaxpr"].consts, invals, relu)
  if name == "remat2":
    body = functools.partial(_evaluate, p["jaxpr"], (), relu=relu)
    return jax.checkpoint(lambda *a: body(a), prevent_cse=p["prevent_cse"], policy=p["policy"])(*invals)
  if name == "scan":
    n_consts, n_carry, body = p["num_consts"], p["num_carry"], p["jaxpr"]
    consts, carry, xs = invals[:n_consts], invals[n_consts : n_consts + n_carry], invals[n_consts + n_carry :]

    def step(c, x):
      out = _evaluate(body.jaxpr, body.consts, [*consts, *c, *x], relu)
      return out[:n_carry], out[n_carry:]

    carry, ys = lax.scan(step, carry, xs, length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
    return [*carry, *ys]
  if name == "cond":
    branches = [functools.partial(_evaluate_branch, branch, relu=relu) for branch in p["branches"]]
    return lax.switch(invals[0], branches, *invals[1:])
  if name == "while":
    n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, init = invals[:n_cond], invals[n_cond : n_cond + n_body], invals[n_cond + n_body :]
    cond, body = p["cond_jaxpr"], p["body_jaxpr"]
    return lax.while_loop(
      lambda c: _evaluate(cond.jaxpr, cond.consts, [*cond_consts, *c], relu)[0],
      lambda c: _evaluate(body.jaxpr, body.consts, [*body_consts, *c], relu),
      list(init),
    )
  subfuns, params = _bind_params(eqn)
  out = eqn.primitive.bind(*subfuns, *invals, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _bind_params(eqn) -> tuple[tuple, dict]:
  """What ``bind`` takes besides the operands: ``get_bind_params`` returns ``(subfuns, params)`` up to JAX 0.7 (as
  in Colab's runtime) and the params alone, the calls' functions among them, from JAX 0.8."""
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  if isinstance(bind_params, tuple):
    return tuple(bind_params[0]), bind_params[1]
  return (), bind_params


def _evaluate_branch(branch: jex_core.ClosedJaxpr, *operands, relu: Callable) -> list:
  return _evaluate(branch.jaxpr, branch.consts, operands, relu)
