"""`xla_cpu`: the fast paths compute what the plain ones do (same values and gradients, another float order),
and `reuse_freed_memory` sets glibc's thresholds where there is glibc and is a no-op elsewhere.

On CPU the steps are compiled with `xla_cpu.compiler_options` (XLA's own convolution kernels instead of
YNNPACK's) and take a large batch's gradient in chunks (`xla_cpu.mean_and_grad`); inside
``xla_cpu.plain_xla()`` they are traced and compiled as stock JAX would. Each check jits a new function
per path: jit traces inside the context.
"""

import ctypes
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import config as config_lib
from deconv_jax import ops, parallel, train, xla_cpu
from deconv_jax.experiments.speed import train_steps
from deconv_jax.tasks import classifier, gan

INFO = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)
pytestmark = pytest.mark.skipif(
  jax.default_backend() != "cpu", reason="the fast paths differ from the plain ones on CPU"
)


def _both_paths(fn, *args):
  fast = jax.jit(lambda *a: fn(*a), compiler_options=xla_cpu.compiler_options("cpu"))(*args)
  with xla_cpu.plain_xla():
    plain = jax.jit(lambda *a: fn(*a), compiler_options=xla_cpu.compiler_options("cpu"))(*args)
  return fast, plain


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    scale = max(float(np.max(np.abs(np.asarray(y)))), 1.0)
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize(
  "kw",
  [{"padding": "VALID"}, {"padding": "SAME", "strides": 2}, {"padding": ((2, 0), (1, 3)), "dilation": (2, 1)}],
)
def test_conv_compiled_with_the_cpu_options_equals_the_plain_conv(kw):
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 12, 11, 5))
  kernel = jax.random.normal(kk, (3, 2, 5, 16))
  out_shape = jax.eval_shape(lambda: ops.conv(x, kernel, **kw)).shape
  g = jax.random.normal(kg, out_shape)

  def value_and_grads(x, kernel):
    y = ops.conv(x, kernel, **kw)
    return y, jax.grad(lambda x, k: jnp.vdot(ops.conv(x, k, **kw), g), argnums=(0, 1))(x, kernel)

  fast, plain = _both_paths(value_and_grads, x, kernel)
  _assert_trees_close(fast, plain)


def _conv_hlo(compiler_options):
  grad = jax.grad(lambda x, k: jnp.sum(ops.conv(x, k) ** 2), argnums=(0, 1))
  lowered = jax.jit(grad, compiler_options=compiler_options).lower(jnp.ones((32, 13, 13, 32)), jnp.ones((3, 3, 32, 64)))
  return lowered.compile().as_text()


def _library_fused_convolutions(hlo):
  """Names of the fused computations that hold a convolution and are called as a YNNPACK fusion."""
  computations = re.findall(r"^%(\S+) [^\n]*\{\n(.*?)^\}", hlo, re.S | re.M)
  with_conv = {name for name, body in computations if " convolution(" in body}
  return {name for name in with_conv if re.search(rf"calls=%{re.escape(name)},[^\n]*__ynn_fusion", hlo)}


# jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK unless told otherwise; older ones (Colab's 0.7.2) have
# neither YNNPACK fusions nor the option, and the steps compile with XLA's defaults there.
CPU_OPTIONS_KNOWN = xla_cpu.cpu_options_supported()
needs_cpu_options = pytest.mark.skipif(
  not CPU_OPTIONS_KNOWN,
  reason=f"jaxlib {jax.lib.__version__}'s XLA:CPU has no YNNPACK fusions and no option to choose them",
)


def test_jaxlib_0_10_and_later_know_the_cpu_options():
  if tuple(map(int, jax.lib.__version__.split(".")[:2])) < (0, 10):
    pytest.skip(f"jaxlib {jax.lib.__version__} predates YNNPACK fusions on CPU")
  assert CPU_OPTIONS_KNOWN  # so the skips above cannot hide a misspelt option


def test_cpu_options_are_used_on_cpu_only_and_by_the_train_steps():
  options = xla_cpu.compiler_options("cpu")
  assert options == (
    {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
    if CPU_OPTIONS_KNOWN
    else None
  )
  assert xla_cpu.compiler_options("gpu") is None and xla_cpu.compiler_options("tpu") is None
  with xla_cpu.plain_xla():
    assert xla_cpu.compiler_options("cpu") is None
  # The train steps are compiled with them.
  assert parallel.DataParallel()._compiler_options() == options


@needs_cpu_options
def test_cpu_options_give_every_convolution_to_xla():
  hlo = _conv_hlo(xla_cpu.compiler_options("cpu"))
  assert hlo.count(" convolution(") == 3  # forward, input and kernel gradient
  assert not _library_fused_convolutions(hlo)


@needs_cpu_options
def test_library_fused_convolutions_finds_a_ynnpack_convolution():
  # The check above can fail: with XLA's defaults (jaxlib 0.10) YNNPACK takes the convolutions.
  assert _library_fused_convolutions(_conv_hlo(None))


def test_stride_1_deconv_and_its_kernel_gradient_equal_the_plain_path():
  ky, kk = jax.random.split(jax.random.key(1))
  y, kernel = jax.random.normal(ky, (2, 10, 10, 16)), jax.random.normal(kk, (4, 4, 3, 16))

  def value_and_grads(y, kernel):
    f = lambda y, k: ops.deconv(y, k, padding="SAME")
    return f(y, kernel), jax.grad(lambda y, k: jnp.sum(f(y, k) ** 2), argnums=(0, 1))(y, kernel)

  _assert_trees_close(*_both_paths(value_and_grads, y, kernel))


@pytest.mark.parametrize("batch", [40, 64])  # chunks of 32 + 8, and two equal chunks
def test_mean_and_grad_in_chunks_equals_the_whole_batch(batch):
  kx, kw = jax.random.split(jax.random.key(2))
  x, w = jax.random.normal(kx, (batch, 6)), jax.random.normal(kw, (6, 3))
  labels = jnp.arange(batch) % 3

  def loss_sum(w, x, labels, nothing):
    assert nothing is None  # None passes through
    logits = jnp.tanh(x @ w)
    return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), labels]), logits

  chunked = lambda w, x, y: xla_cpu.mean_and_grad(loss_sum, w, x, y, None)
  fast, plain = _both_paths(chunked, w, x, labels)
  assert fast[0][1].shape == (batch, 3)
  assert "optimization_barrier" in str(jax.make_jaxpr(chunked)(w, x, labels))  # it did take chunks
  _assert_trees_close(fast, plain)
  # ... and the plain path is the batch mean's own gradient.
  mean = lambda w: loss_sum(w, x, labels, None)[0] / batch
  _assert_trees_close(plain[1], jax.grad(mean)(w))


def test_mean_and_grad_never_splits_a_coupled_batch():
  # Batch norm in training mode: each example's loss depends on the whole batch, so chunks would change it.
  kx, kw = jax.random.split(jax.random.key(3))
  x, w = jax.random.normal(kx, (64, 6)), jax.random.normal(kw, (6, 3))

  def loss_sum(w, x):
    h = x @ w
    h = (h - h.mean(0)) / (h.std(0) + 1e-5)  # normalized over the batch
    return jnp.sum(jnp.tanh(h) ** 2), {"mean": h.mean(0)}  # aux without a batch axis, as batch statistics

  coupled = lambda w, x: xla_cpu.mean_and_grad(loss_sum, w, x, coupled=True)
  assert "optimization_barrier" not in str(jax.make_jaxpr(coupled)(w, x))  # one piece
  (loss, aux), grads = jax.jit(coupled, compiler_options=xla_cpu.compiler_options("cpu"))(w, x)
  (whole, whole_aux), whole_grads = jax.value_and_grad(loss_sum, has_aux=True)(w, x)
  _assert_trees_close((loss, aux, grads), (whole / 64, whole_aux, jax.tree.map(lambda g: g / 64, whole_grads)))


def _step_grads_and_metrics(task, config, batch_size):
  state = task.create_state(config, jax.random.key(0), INFO, total_steps=10)
  rng = np.random.default_rng(0)
  batch = {
    "image": jnp.asarray(rng.random((batch_size, 28, 28, 1), np.float32)),
    "label": jnp.asarray(rng.integers(0, 10, (batch_size,), np.int32)),
  }
  # SGD with learning rate 1: the step's parameter change is minus the gradient itself.
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 1.0
  state = task.create_state(config, jax.random.key(0), INFO, total_steps=10)

  def step(state, batch):
    new, metrics = task.train_step(state, batch, jax.random.key(1), config=config)
    return jax.tree.map(jnp.subtract, state.params, new.params), metrics

  return _both_paths(step, state, batch)


@pytest.mark.slow
def test_classifier_step_in_chunks_equals_the_plain_step():
  (grads, metrics), (plain_grads, plain_metrics) = _step_grads_and_metrics(classifier, config_lib.base(), 72)
  _assert_trees_close(metrics, plain_metrics)
  _assert_trees_close(grads, plain_grads, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["peers_dcgan", "configs_gan"])
def test_gan_step_equals_the_plain_step(name):
  config = train_steps.peers_dcgan_config() if name == "peers_dcgan" else train_steps.project_gan_config()
  config.generator.features, config.discriminator.features = (8,) * len(config.generator.features), (8, 16)
  (grads, metrics), (plain_grads, plain_metrics) = _step_grads_and_metrics(gan, config, 72)
  _assert_trees_close(metrics, plain_metrics)
  _assert_trees_close(grads, plain_grads, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- host memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_sets_both_thresholds_on_glibc_once():
  # In a fresh process: the setting is per process and cached.
  code = (
    "from deconv_jax import xla_cpu; "
    "print(xla_cpu.reuse_freed_memory(), xla_cpu.reuse_freed_memory(), xla_cpu.reuse_freed_memory.cache_info().misses)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
  assert out == ["True", "True", "1"]


def test_without_a_c_library_it_changes_nothing(monkeypatch):
  def no_libc(*args, **kwargs):
    raise OSError("no libc here")

  monkeypatch.setattr(ctypes, "CDLL", no_libc)
  xla_cpu.reuse_freed_memory.cache_clear()
  try:
    assert xla_cpu.reuse_freed_memory() is False
  finally:
    xla_cpu.reuse_freed_memory.cache_clear()


def test_off_linux_it_changes_nothing(monkeypatch):
  monkeypatch.setattr(sys, "platform", "darwin")
  xla_cpu.reuse_freed_memory.cache_clear()
  try:
    assert xla_cpu.reuse_freed_memory() is False
  finally:
    xla_cpu.reuse_freed_memory.cache_clear()


def test_train_sets_it_before_any_work(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(xla_cpu, "reuse_freed_memory", lambda: calls.append("set"))
  monkeypatch.setattr(train.tasks, "get", lambda name: (_ for _ in ()).throw(RuntimeError("stop here")))
  with pytest.raises(RuntimeError, match="stop here"):
    train.train_and_evaluate(config_lib.base(), str(tmp_path))
  assert calls == ["set"]
