"""The task registry and the `tasks.Task` protocol (every task module is registered and satisfies it), and which
way each task's update moves the objective it is for."""

import functools
import importlib
import inspect
import pkgutil
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import on_two_devices

from deconv_jax import attribution, augment, data, tasks, train
from deconv_jax import config as config_lib
from deconv_jax.tasks import autoencoder, classifier, gan, inversion

MODULES = sorted(m.name for m in pkgutil.iter_modules(tasks.__path__))  # tasks/ holds tasks only
FUNCTIONS = ("create_state", "train_step", "eval_step", "eval_metrics")
OPTIONAL = ("samples", "generate_many")
INFO = data.DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples=16)


def _parameters(fn, skip=0):
  return [(p.name, p.kind, p.default) for p in list(inspect.signature(fn).parameters.values())[skip:]]


def test_every_task_module_is_registered_under_its_name():
  assert sorted(tasks._TASKS) == MODULES
  for name in MODULES:
    assert tasks.get(name) is importlib.import_module(f"deconv_jax.tasks.{name}")


@pytest.mark.parametrize("name", MODULES)
def test_a_task_module_satisfies_the_protocol(name):
  task = tasks.get(name)
  assert isinstance(task, tasks.Task)
  for function in FUNCTIONS:  # the protocol's methods without self: same names, kinds and defaults
    assert _parameters(getattr(task, function)) == _parameters(getattr(tasks.Task, function), skip=1), function
  for member in OPTIONAL:
    assert getattr(task, member) is None or callable(getattr(task, member)), member
  assert isinstance(config_lib.base()[task.model_section], type(config_lib.base().model))


def test_only_the_generator_tasks_draw_samples():
  drawn = {name for name in MODULES if tasks.get(name).samples is not None}
  measured = {name for name in MODULES if tasks.get(name).generate_many is not None}
  assert drawn == measured == {"gan"}


def test_an_unknown_task_is_a_config_error_naming_the_registered_ones(tmp_path):
  message = f"config.task='nope' is not allowed: one of {tuple(tasks._TASKS)}"
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    tasks.get("nope")
  c = config_lib.base()
  c.task = "nope"
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------
# Which way each update goes: one step lowers the objective it is for, on a fixed batch. Each objective is
# written here from its definition, not taken from the task's module, so a sign error there cannot cancel out.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  """16 embedded training digits, ``image`` [16, 28, 28, 1] in [0, 1] and ``label``."""
  b = next(data.eval_batches(data.get_source(config_lib.base().dataset, "train"), global_batch_size=16))
  return {"image": b["image"], "label": b["label"]}


def _step(task, config, state, batch, rng):
  return jax.jit(functools.partial(task.train_step, config=config))(state, batch, rng)


def _small(task: str):
  c = config_lib.base()
  c.task = task
  c.model.features, c.model.dense = (8, 16), (32,)
  c.autoencoder.features = (8, 16)
  c.generator.latent_dim, c.generator.base_features, c.generator.features = 8, 8, (8, 4)
  c.discriminator.features = (8, 8)
  return c


def _mse(a, b):
  return jnp.mean((a - b) ** 2)


def _cross_entropy(logits, labels):  # softmax cross-entropy of integer labels, averaged over the batch
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def _before_after(objective, before, after):
  """``objective`` (jitted: one compile) at the parameters ``before`` and ``after`` the step, as floats."""
  fn = jax.jit(objective)
  return float(fn(before)), float(fn(after))


def _to_unit(images, output_activation):  # the generator's output range -> [0, 1], unclipped
  return (images + 1) / 2 if output_activation == "tanh" else images


def classifier_objective(digits):
  """Softmax cross-entropy of the labels, averaged over the batch."""
  c = _small("classifier")
  state = classifier.create_state(c, jax.random.key(0), INFO, 10)

  loss = lambda params: _cross_entropy(state.apply_fn({"params": params}, digits["image"]), digits["label"])

  after, _ = _step(classifier, c, state, digits, jax.random.key(1))
  return {"cross-entropy": _before_after(loss, state.params, after.params)}


def autoencoder_objective(digits):
  """Mean squared error of the reconstructions."""
  c = _small("autoencoder")
  state = autoencoder.create_state(c, jax.random.key(0), INFO, 10)
  loss = lambda params: _mse(state.apply_fn({"params": params}, digits["image"]), digits["image"])
  after, _ = _step(autoencoder, c, state, digits, jax.random.key(1))
  return {"reconstruction MSE": _before_after(loss, state.params, after.params)}


def inversion_objective(digits, classifier_workdir):
  """Mean squared error of the images the generator makes from the frozen classifier's pool2 features."""
  c = _small("inversion")
  c.inversion.classifier_workdir, c.inversion.layer = classifier_workdir, "pool2"
  state = inversion.create_state(c, jax.random.key(0), INFO, 10)
  acts = attribution.activations(state.classifier, {"params": state.classifier_params}, digits["image"])["pool2"]
  features = acts.reshape(len(acts), -1)

  def loss(params):  # the generator in training mode (batch statistics), as its step runs it
    g_vars = {"params": params, "batch_stats": state.batch_stats}
    out, _ = state.generator.apply(g_vars, features, train=True, mutable=["batch_stats"])
    return _mse(_to_unit(out, state.generator.output_activation), digits["image"])

  after, _ = _step(inversion, c, state, digits, jax.random.key(1))
  return {"reconstruction MSE": _before_after(loss, state.params, after.params)}


def gan_objectives(digits):
  """The non-saturating GAN (Goodfellow et al. 2014): D minimizes -log D(x) - log(1 - D(G(z))), then G
  minimizes -log D(G(z)) against the updated D, with softplus(-l) = -log sigmoid(l) of D's logits l."""
  c = _small("gan")
  state = gan.create_state(c, jax.random.key(0), INFO, 10)
  rng = jax.random.key(1)
  z = gan._latents(rng, 0, len(digits["image"]), c.generator.latent_dim)  # the step's latents
  real = digits["image"] * 2 - 1  # tanh's range

  def fakes(g_params):
    g_vars = {"params": g_params, "batch_stats": state.batch_stats}
    return state.generator.apply(g_vars, z, train=True, mutable=["batch_stats"])[0]

  def d_logits(d_params, images):
    return state.discriminator.apply({"params": d_params}, images)

  def d_loss(d_params):
    fake = fakes(state.params["generator"])
    return jnp.mean(jax.nn.softplus(-d_logits(d_params, real)) + jax.nn.softplus(d_logits(d_params, fake)))

  after, _ = _step(gan, c, state, digits, rng)
  d_after = after.params["discriminator"]
  g_loss = lambda g_params: jnp.mean(jax.nn.softplus(-d_logits(d_after, fakes(g_params))))
  return {
    "discriminator loss": _before_after(d_loss, state.params["discriminator"], d_after),
    "generator loss against the updated discriminator": _before_after(
      g_loss, state.params["generator"], after.params["generator"]
    ),
  }


@pytest.mark.parametrize("name", MODULES)
def test_one_step_lowers_the_objective_it_optimizes(name, digits, request):
  if name == "inversion":
    found = inversion_objective(digits, request.getfixturevalue("classifier_run")[0])
  else:
    found = {"classifier": classifier_objective, "autoencoder": autoencoder_objective, "gan": gan_objectives}[name](
      digits
    )
  for objective, (before, after) in found.items():
    assert after < before, f"{name}: one step moved the {objective} from {before:.6f} to {after:.6f}"


@pytest.mark.parametrize("shift,rotation", [(2.0, 0.0), (0.0, 10.0)], ids=["shift", "rotation"])
def test_the_classifier_step_augments_each_image_by_its_index_and_reports_the_batch_before_it(digits, shift, rotation):
  # On one device (no axis name) image i's augmentation key is folded from i itself: the step equals the plain
  # step on augment.augment_batch(rng, images, offset=0) images. Over devices the offset is the device's first
  # global index (test_train.py: 8 devices give the 1-device parameters, augmented). Its metrics are those of the
  # parameters it started from, on the images it trained on.
  c = _small("classifier")
  c.augment.max_shift, c.augment.max_rotation = shift, rotation
  state = classifier.create_state(c, jax.random.key(0), INFO, 10)
  rng = jax.random.key(3)
  augmented, _ = _step(classifier, c, state, digits, rng)
  images = augment.augment_batch(rng, digits["image"], 0, max_shift=shift, max_rotation=rotation, max_scale=0.0)
  plain, metrics = _step(classifier, _small("classifier"), state, {"image": images, "label": digits["label"]}, rng)
  for got, want in zip(jax.tree.leaves(augmented.params), jax.tree.leaves(plain.params), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  logits = state.apply_fn({"params": state.params}, images)
  assert set(metrics) == {"loss", "accuracy"}
  np.testing.assert_allclose(metrics["loss"], _cross_entropy(logits, digits["label"]), rtol=1e-5)
  assert float(metrics["accuracy"]) == float(jnp.mean(jnp.argmax(logits, axis=1) == digits["label"]))


def test_the_classifier_step_over_devices_augments_each_image_by_its_global_index(digits):
  """Two devices, as `jax.vmap` with the step's axis name stands in for them: device d holds images 8d..8d+7 and
  folds their keys from those global indices, so the step equals the one-device step on all 16."""
  c = _small("classifier")
  c.augment.max_shift, c.augment.max_rotation = 2.0, 10.0
  state = classifier.create_state(c, jax.random.key(0), INFO, 10)
  rng = jax.random.key(3)
  one, one_metrics = _step(classifier, c, state, digits, rng)
  two, two_metrics = on_two_devices(functools.partial(classifier.train_step, rng=rng, config=c), state, digits)
  for got, want in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[0], got[1])  # the gradient is the mean over both devices on each
  np.testing.assert_allclose(two_metrics["loss"][0], one_metrics["loss"], rtol=1e-5)


def test_the_classifier_eval_counts_only_the_real_rows(digits):
  # Padding rows (mask 0) fill the last eval batch: they add nothing to any sum.
  c = _small("classifier")
  state = classifier.create_state(c, jax.random.key(0), INFO, 10)
  step = jax.jit(classifier.eval_step)
  ones = jnp.ones(16)
  whole = step(state, {**digits, "mask": ones})
  half = step(state, {"image": digits["image"][:8], "label": digits["label"][:8], "mask": ones[:8]})
  padded = step(state, {**digits, "mask": ones.at[8:].set(0)})
  assert float(whole["count"]) == 16 and float(padded["count"]) == 8
  for key in ("loss", "correct", "count"):
    np.testing.assert_allclose(padded[key], half[key], rtol=1e-6)
  metrics = classifier.eval_metrics(jax.device_get(padded))
  assert metrics["num_examples"] == 8 and metrics["accuracy"] == float(half["correct"]) / 8
  logits = state.apply_fn({"params": state.params}, digits["image"])
  assert float(whole["correct"]) == float(jnp.sum(jnp.argmax(logits, axis=1) == digits["label"]))
  np.testing.assert_allclose(whole["loss"], 16 * _cross_entropy(logits, digits["label"]), rtol=1e-5)
  assert classifier.eval_metrics({"loss": 3.0, "correct": 2.0, "count": 4.0}) == {
    "accuracy": 0.5,
    "loss": 0.75,
    "num_examples": 4,
  }
  # one real row is its own mean; none (a split smaller than the devices' padding) is 0, not a division by 0
  assert classifier.eval_metrics({"loss": 0.5, "correct": 1.0, "count": 1.0}) == {
    "accuracy": 1.0,
    "loss": 0.5,
    "num_examples": 1,
  }
  assert classifier.eval_metrics({"loss": 0.0, "correct": 0.0, "count": 0.0}) == {
    "accuracy": 0.0,
    "loss": 0.0,
    "num_examples": 0,
  }
