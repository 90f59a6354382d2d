"""The reconstruction tasks: the (tied) autoencoder, and the inversion of a frozen classifier's features."""

import functools
import os

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import attribution, data, eval_loop, tasks, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.config import ConfigError
from deconv_jax.tasks import autoencoder, inversion
from deconv_jax.workdir import RunDir

METRICS = {"loss", "psnr", "ssim", "num_examples"}
SUMS = jax.jit(autoencoder.reconstruction_sums)  # one compile, not one per eager op


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def info():
  return data.get_info(config_lib.base().dataset, "train")


def digits(n):
  """``n`` embedded training digits: ``image`` [n, 28, 28, 1] in [0, 1], ``label``, ``mask`` (all 1)."""
  source = data.get_source(config_lib.base().dataset, "train")
  return next(data.eval_batches(source, global_batch_size=n))


@pytest.fixture(scope="module")
def batch():
  return digits(16)


@pytest.fixture(scope="module")
def batch40():
  """More than `xla_cpu.CPU_CHUNK`, where a batch whose examples were not coupled would be taken in chunks."""
  return digits(40)


@pytest.fixture
def classifier_run(classifier_run):
  """The shared tiny classifier run's workdir: the run an inversion inverts."""
  return classifier_run[0]


def ae_config(tied: bool, latent_dim: int = 0) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.base()
  c.task = "autoencoder"
  c.autoencoder.features = (8, 16)
  c.autoencoder.tied = tied
  c.autoencoder.latent_dim = latent_dim
  return c


def inv_config(classifier_workdir: str, layer: str = "pool2") -> config_lib.ml_collections.ConfigDict:
  c = config_lib.base()
  c.task = "inversion"
  c.inversion.classifier_workdir = classifier_workdir
  c.inversion.layer = layer
  c.generator.features = (8, 4)
  c.generator.base_features = 8
  return c


# ----------------------------------------------------------------------------
# Autoencoder.
# ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("tied,latent_dim", [(True, 0), (False, 16)], ids=["tied", "free-bottleneck"])
def test_autoencoder_steps_change_every_param_and_the_loss_falls(info, batch, tied, latent_dim):
  c = ae_config(tied, latent_dim)
  c.optimizer.learning_rate = 1e-2
  state = autoencoder.create_state(c, jax.random.key(0), info, 30)
  decoder = state.params["decoder"]
  if tied:  # The tied decoder owns biases only: its kernels are the encoder's.
    assert all(name.startswith("bias") for name in decoder)
  else:
    assert {"deconv1", "deconv2", "dense"} <= set(decoder)
  initial = _leaves(state.params)
  step = jax.jit(functools.partial(autoencoder.train_step, config=c))
  losses = []
  for i in range(30):
    state, metrics = step(state, batch, jax.random.key(i))
    assert set(metrics) == {"loss"}
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.5 * losses[0], losses
  assert all(not np.array_equal(a, b) for a, b in zip(initial, _leaves(state.params), strict=True))
  recon = jax.jit(autoencoder.reconstruct)(state, batch["image"])
  assert recon.shape == batch["image"].shape
  assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


def test_an_autoencoder_step_is_sgd_on_the_reconstruction_error(info, batch):
  """With plain SGD a step is ``params - lr * grad``: recomputed here from the loss's definition, the mean over the
  batch of each image's mean squared error of its reconstruction, which is also the step's ``loss``."""
  c = ae_config(tied=True)
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.5
  state = autoencoder.create_state(c, jax.random.key(0), info, 10)
  images = jnp.asarray(batch["image"])
  after, metrics = jax.jit(functools.partial(autoencoder.train_step, config=c))(state, batch, jax.random.key(1))

  def mse(params):
    recon = autoencoder.build_model(c, info.image_shape).apply({"params": params}, images)
    return jnp.mean((recon - images) ** 2)

  loss, grads = jax.jit(jax.value_and_grad(mse))(state.params)
  assert set(metrics) == {"loss"}
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads)
  for got, wanted in zip(_leaves(after.params), _leaves(expected), strict=True):
    np.testing.assert_allclose(got, wanted, rtol=1e-4, atol=1e-6)
  model = autoencoder.build_model(c, info.image_shape)
  np.testing.assert_allclose(autoencoder.reconstruct(after, images), model.apply({"params": after.params}, images))


def test_metrics_of_a_perfect_reconstruction_ignore_padding(batch):
  images = jnp.asarray(batch["image"])
  mask = np.ones(16, np.float32)
  mask[12:] = 0.0
  recon = images.at[12:].set(1.0 - images[12:])  # Wrong only in the padding rows.
  metrics = autoencoder.eval_metrics(jax.device_get(SUMS(recon, images, jnp.asarray(mask))))
  assert metrics["num_examples"] == 12
  assert metrics["loss"] == 0.0
  assert metrics["psnr"] == pytest.approx(100.0)  # MSE floored at 1e-10
  assert metrics["ssim"] == pytest.approx(1.0, abs=1e-5)


def test_metrics_of_a_known_error(batch):
  images = jnp.asarray(batch["image"])
  sums = SUMS(images + 0.1, images, jnp.ones(16))  # MSE 0.01 -> 20 dB
  metrics = autoencoder.eval_metrics(jax.device_get(sums))
  assert metrics["loss"] == pytest.approx(0.01, rel=1e-4)
  assert metrics["psnr"] == pytest.approx(20.0, abs=1e-3)
  assert 0.0 < metrics["ssim"] < 1.0
  # SSIM for data in [0, 1] (its constants scale with the range), averaged over the real rows
  expected_ssim = float(jnp.mean(dm_pix.ssim(images + 0.1, images, max_val=1.0)))
  assert metrics["ssim"] == pytest.approx(expected_ssim, rel=1e-5)
  one = autoencoder.eval_metrics(jax.device_get(SUMS(images + 0.1, images, jnp.zeros(16).at[3].set(1.0))))
  assert one["num_examples"] == 1 and one["loss"] == pytest.approx(0.01, rel=1e-4)  # one real row: its own MSE


def test_autoencoder_eval_step_scores_an_identity_model_as_perfect(info, batch):
  state = autoencoder.create_state(ae_config(True), jax.random.key(0), info, 1)
  state = state.replace(apply_fn=lambda variables, images: images)
  metrics = autoencoder.eval_metrics(jax.device_get(autoencoder.eval_step(state, batch)))
  assert metrics == pytest.approx({"loss": 0.0, "psnr": 100.0, "ssim": 1.0, "num_examples": 16}, abs=1e-5)


# ----------------------------------------------------------------------------
# Inversion.
# ----------------------------------------------------------------------------


@pytest.mark.slow
def test_inversion_steps_train_only_the_generator(info, batch, classifier_run):
  c = inv_config(classifier_run)
  _, restored = inversion.load_classifier(classifier_run, info.image_shape)
  state = inversion.create_state(c, jax.random.key(0), info, 5)
  abstract = jax.eval_shape(lambda r: inversion.create_state(c, r, info, 5), jax.random.key(0))
  assert [x.shape for x in jax.tree.leaves(abstract)] == [x.shape for x in jax.tree.leaves(state)]  # restore templates
  assert state.layer == "pool2"
  assert state.params["project"]["kernel"].shape == (5 * 5 * 16, 7 * 7 * 8)  # pool2 [5, 5, 16] flattened
  initial_g, initial_bn = _leaves(state.params), _leaves(state.batch_stats)
  step = jax.jit(functools.partial(inversion.train_step, config=c))
  for i in range(3):
    state, metrics = step(state, batch, jax.random.key(i))
    assert np.isfinite(float(metrics["loss"]))
  for a, b in zip(_leaves(restored), _leaves(state.classifier_params), strict=True):
    np.testing.assert_array_equal(a, b)
  assert all(not np.array_equal(a, b) for a, b in zip(initial_g, _leaves(state.params), strict=True))
  assert all(not np.array_equal(a, b) for a, b in zip(initial_bn, _leaves(state.batch_stats), strict=True))
  assert int(state.step) == 3
  recon = jax.jit(inversion.reconstruct)(state, batch["image"])
  assert recon.shape == batch["image"].shape
  assert float(recon.min()) >= 0.0 and float(recon.max()) <= 1.0


@pytest.mark.parametrize("output_activation", ["tanh", "none"])
def test_an_inversion_step_is_sgd_on_the_reconstruction_error_from_the_features(
  info, batch40, classifier_run, output_activation
):
  """With plain SGD the generator's step is ``params - lr * grad`` of the mean over the batch of each image's MSE
  between the image and the generator's output (training mode, unclipped, in [0, 1] units) from the frozen
  classifier's features of it: recomputed here from that definition, with the new batch statistics. With no
  output activation the output leaves [0, 1], where a clip would change the loss and stop its gradient. The
  batch of 40 is one batch for batch norm, never chunks."""
  batch = batch40
  c = inv_config(classifier_run)
  c.optimizer.name, c.optimizer.learning_rate = "sgd", 0.5
  c.generator.output_activation = output_activation
  state = inversion.create_state(c, jax.random.key(0), info, 5)
  images = jnp.asarray(batch["image"])
  after, metrics = jax.jit(functools.partial(inversion.train_step, config=c))(state, batch, jax.random.key(1))
  acts = attribution.activations(state.classifier, {"params": state.classifier_params}, images)["pool2"]
  codes = acts.reshape(len(images), -1)

  def mse(params):
    g_vars = {"params": params, "batch_stats": state.batch_stats}
    out, updates = state.generator.apply(g_vars, codes, train=True, mutable=["batch_stats"])
    recon = (out + 1) / 2 if state.generator.output_activation == "tanh" else out
    return jnp.mean((recon - images) ** 2), updates["batch_stats"]

  (loss, stats), grads = jax.jit(jax.value_and_grad(mse, has_aux=True))(state.params)
  np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
  assert int(after.step) == 1
  for got, wanted in zip(_leaves(after.params), _leaves(jax.tree.map(lambda p, g: p - 0.5 * g, state.params, grads))):
    np.testing.assert_allclose(got, wanted, rtol=1e-4, atol=1e-6)
  for got, wanted in zip(_leaves(after.batch_stats), _leaves(stats), strict=True):
    np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-6)


def test_an_inversion_eval_step_scores_the_reconstructions_of_the_real_rows(info, batch, classifier_run):
  """The eval loss is the mean over the real rows (mask 1) of each image's MSE to the generator's output in
  inference mode, clipped to [0, 1], from the classifier's features of that image; padding rows count nowhere."""
  c = inv_config(classifier_run)
  state = inversion.create_state(c, jax.random.key(0), info, 5)
  images = jnp.asarray(batch["image"])
  padded = {**batch, "image": images.at[10:].set(0.0), "mask": jnp.ones(16).at[10:].set(0.0)}
  metrics = inversion.eval_metrics(jax.device_get(jax.jit(inversion.eval_step)(state, padded)))
  acts = attribution.activations(state.classifier, {"params": state.classifier_params}, images[:10])["pool2"]
  g_vars = {"params": state.params, "batch_stats": state.batch_stats}
  recon = jnp.clip((state.generator.apply(g_vars, acts.reshape(10, -1)) + 1) / 2, 0.0, 1.0)
  assert metrics["num_examples"] == 10
  np.testing.assert_allclose(metrics["loss"], jnp.mean((recon - images[:10]) ** 2), rtol=1e-5)
  np.testing.assert_allclose(jax.jit(inversion.reconstruct)(state, images[:10]), recon, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,size", [("act1", 26 * 26 * 8), ("hidden1", 32), ("logits", 10)])
def test_inversion_takes_any_layer(info, classifier_run, layer, size):
  c = inv_config(classifier_run, layer)
  state = jax.eval_shape(lambda r: inversion.create_state(c, r, info, 1), jax.random.key(0))
  assert state.params["project"]["kernel"].shape == (size, 7 * 7 * 8)


def test_a_bad_layer_names_the_layers(info, classifier_run):
  with pytest.raises(ConfigError) as e:
    inversion.create_state(inv_config(classifier_run, "pool9"), jax.random.key(0), info, 1)
  message = str(e.value)
  assert message.startswith("config.inversion.layer='pool9' is not allowed: one of ('act1', 'pool1', 'act2', 'pool2'")
  assert message.endswith(f"(the classifier in config.inversion.classifier_workdir={classifier_run!r})"), message
  assert "\n" not in message


def test_an_inversion_state_holds_its_generator_s_batch_statistics(info, classifier_run):
  """The generator's BatchNorm statistics are part of the state from the start (they move with each step and are
  what the inversion generates with); its initial ones: zero means, unit variances."""
  state = inversion.create_state(inv_config(classifier_run), jax.random.key(0), info, 1)
  leaves = jax.tree_util.tree_leaves_with_path(state.batch_stats)
  assert leaves
  for path, value in leaves:
    expected = 1.0 if "var" in jax.tree_util.keystr(path) else 0.0
    np.testing.assert_array_equal(value, np.full(value.shape, expected))


def _fake_run(workdir, task: str, with_checkpoint: bool):
  """A workdir with a config.json of ``task`` and, if asked, an (empty) complete checkpoint."""
  os.makedirs(workdir)
  c = config_lib.base()
  c.task = task
  config_lib.save_json(c, os.path.join(workdir, "config.json"))
  if with_checkpoint:
    os.makedirs(os.path.join(workdir, "checkpoints", "5"))
    open(os.path.join(workdir, "checkpoints", "5", "_CHECKPOINT_METADATA"), "w").close()


@pytest.mark.parametrize(
  "case,expected",
  [
    ("missing", "has no config.json"),
    ("no_checkpoint", "has no checkpoint: train the classifier first"),
    ("not_a_classifier", "is a 'gan' run, not a classifier run"),
  ],
)
def test_a_bad_classifier_workdir_is_one_line_naming_the_key(info, tmp_path, case, expected):
  workdir = str(tmp_path / "run")
  if case == "no_checkpoint":
    _fake_run(workdir, "classifier", with_checkpoint=False)
  elif case == "not_a_classifier":
    _fake_run(workdir, "gan", with_checkpoint=True)
  with pytest.raises(ConfigError) as e:
    inversion.create_state(inv_config(workdir), jax.random.key(0), info, 1)
  message = str(e.value)
  assert message.startswith(f"config.inversion.classifier_workdir={workdir!r} {expected}"), message
  assert "\n" not in message
  with pytest.raises(ConfigError, match=r"^config\.inversion\.classifier_workdir="):  # train checks before any work
    train.train_and_evaluate(inv_config(workdir), str(tmp_path / "inversion"))


def test_a_classifier_of_other_images_is_refused(classifier_run):
  with pytest.raises(ConfigError) as info:
    inversion.load_classifier(classifier_run, (32, 32, 3))
  assert str(info.value) == (
    f"config.inversion.classifier_workdir={classifier_run!r} holds a classifier of images (28, 28, 1), "
    "config.dataset has (32, 32, 3)"
  )


def test_a_classifier_checkpoint_that_does_not_restore_is_one_line_naming_the_key(info, tmp_path):
  workdir = str(tmp_path / "run")
  _fake_run(workdir, "classifier", with_checkpoint=True)  # a checkpoint directory with nothing in it
  with pytest.raises(ConfigError) as e:
    inversion.create_state(inv_config(workdir), jax.random.key(0), info, 1)
  message = str(e.value)
  prefix = f"config.inversion.classifier_workdir={workdir!r}: --workdir={workdir}: checkpoint 5 does not restore ("
  assert message.startswith(prefix), message
  assert message.endswith("); training this workdir again moves it aside and resumes from the one before"), message
  assert "\n" not in message


# ----------------------------------------------------------------------------
# End to end: train.train_and_evaluate, checkpoint, evaluate.
# ----------------------------------------------------------------------------


def _short(c):
  c.num_train_steps = 20
  c.eval_every_steps = 20
  c.checkpoint_every_steps = 20
  return c


@pytest.mark.slow
def test_the_autoencoder_trains_end_to_end(tmp_path):
  workdir = str(tmp_path)
  metrics = train.train_and_evaluate(_short(ae_config(True)), workdir)
  assert set(metrics) == METRICS
  assert metrics["num_examples"] == 500
  assert all(np.isfinite(metrics[k]) for k in METRICS)
  assert RunDir(workdir).latest_step() == 20
  assert not os.path.exists(os.path.join(workdir, "images"))  # no samples grid: reconstructions need inputs


@pytest.mark.slow
def test_the_inversion_trains_end_to_end_and_its_checkpoint_evaluates(tmp_path, classifier_run):
  workdir = str(tmp_path)
  metrics = train.train_and_evaluate(_short(inv_config(classifier_run)), workdir)
  assert set(metrics) == METRICS
  assert metrics["num_examples"] == 500
  assert all(np.isfinite(metrics[k]) for k in METRICS)
  assert RunDir(workdir).latest_step() == 20
  saved = config_lib.load_json(os.path.join(workdir, "config.json"))
  run = workdir_lib.restore(saved, workdir, tasks.get(saved.task))
  assert run.task is tasks.get("inversion") and run.step == 20
  _, classifier_params = inversion.load_classifier(classifier_run, (28, 28, 1))
  for a, b in zip(_leaves(classifier_params), _leaves(run.state.classifier_params), strict=True):
    np.testing.assert_array_equal(a, b)
  again = eval_loop.evaluate_workdir(saved, workdir)
  assert again == pytest.approx({**metrics, "step": 20}, rel=1e-5)


def test_train_cli_names_a_bad_classifier_workdir(tmp_path, cli):
  missing = str(tmp_path / "nope")
  args = ["--config=configs/inversion.py", f"--config.inversion.classifier_workdir={missing}", f"--workdir={tmp_path}"]
  result = cli("deconv_jax.train", *args)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and f"config.inversion.classifier_workdir={missing!r} has no config.json" in last
