"""The GAN task: steps that change both networks, device-split invariance, samples, and measurements end to end."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, steps_over_processes

from deconv_jax import config as config_lib
from deconv_jax import data, train
from deconv_jax import workdir as workdir_lib
from deconv_jax.tasks import gan


def tiny_gan(**generator):
  c = config_lib.base()
  c.task = "gan"
  c.batch_size = 16
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.generator.latent_dim = 8
  c.generator.base_features = 8
  c.generator.features = (8, 4)
  c.discriminator.features = (8, 8)
  c.measure.num_samples = 64
  c.generator.update(generator)
  return c


INFO = data.DatasetInfo(image_shape=(28, 28, 1), num_classes=10, num_examples=16)


def batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.random((n, 28, 28, 1), np.float32)), "label": jnp.arange(n) % 10}


@pytest.mark.slow
@pytest.mark.parametrize(
  "generator",
  [
    {"upsample": "transpose", "kernel_size": 4},
    {"upsample": "resize_conv", "kernel_size": 3},
    {"upsample": "subpixel", "kernel_size": 3, "batch_norm": False},
    {"upsample": "transpose", "kernel_size": 3, "conditional": True, "output_activation": "sigmoid"},
  ],
  ids=["transpose", "resize_conv", "subpixel_no_bn", "conditional"],
)
def test_steps_change_both_networks_and_stay_finite(generator):
  config = tiny_gan(**generator)
  state = gan.create_state(config, jax.random.key(0), INFO, 10)
  step = jax.jit(lambda s, b, r: gan.train_step(s, b, r, config=config))
  new = state
  for i in range(3):
    new, metrics = step(new, batch(seed=i), jax.random.key(i))
    assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  assert int(new.step) == 3
  for net in ("generator", "discriminator"):
    before, after = jax.tree.leaves(state.params[net]), jax.tree.leaves(new.params[net])
    assert all(a.shape == b.shape for a, b in zip(before, after))
    assert any(not np.allclose(a, b) for a, b in zip(before, after)), net
  if config.generator.batch_norm:
    assert any(
      not np.allclose(a, b) for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats))
    )
  images = gan.samples(new)
  # One class per column when conditional (6 rows of the 10 classes), else 8 x 8.
  assert images.shape == ((6, 10, 28, 28, 1) if config.generator.conditional else (8, 8, 28, 28, 1))
  assert float(images.min()) >= 0 and float(images.max()) <= 1
  if config.generator.conditional:  # column k is class k: the same as generating class k directly
    z = gan.sample_latents(new, 60)[3::10]
    np.testing.assert_allclose(images[:, 3], gan.generate(new, z, jnp.full((6,), 3)), atol=1e-5)


@pytest.mark.slow
def test_discriminator_step_does_not_touch_the_generator_loss_inputs():
  # The D loss sees fakes through stop_gradient: its gradient w.r.t. G params is exactly zero.
  config = tiny_gan()
  state = gan.create_state(config, jax.random.key(0), INFO, 10)
  z = gan.sample_latents(state, 16)

  def d_loss_of_g(g_params):
    fake, _ = state.generator.apply(
      {"params": g_params, "batch_stats": state.batch_stats}, z, train=True, mutable=["batch_stats"]
    )
    logits = state.discriminator.apply({"params": state.params["discriminator"]}, jax.lax.stop_gradient(fake))
    return jnp.mean(jax.nn.softplus(logits))

  grads = jax.grad(d_loss_of_g)(state.params["generator"])
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(grads))


def test_latents_are_keyed_by_global_index():
  rng = jax.random.key(3)
  whole = gan._latents(rng, 0, 8, 5)
  halves = jnp.concatenate([gan._latents(rng, 0, 4, 5), gan._latents(rng, 4, 4, 5)])
  np.testing.assert_array_equal(whole, halves)


GAN_ARGS = [
  "--config.task=gan",
  "--config.batch_size=16",
  "--config.num_train_steps=3",
  "--config.generator.latent_dim=8",
  "--config.generator.base_features=8",
  "--config.generator.features=(8, 4)",
  "--config.discriminator.features=(8, 8)",
  "--config.sample_every_steps=2",
]


@pytest.mark.slow
def test_eight_devices_give_the_one_device_parameters_and_so_does_pmap(cli, tmp_path):
  # Batch-norm statistics are averaged over the devices and latents keyed by global index: same step.
  params = {}
  for devices, kind in ((1, "shard_map"), (8, "shard_map"), (8, "pmap")):
    workdir = str(tmp_path / f"{kind}{devices}")
    cli("deconv_jax.train", f"--workdir={workdir}", *GAN_ARGS, f"--config.parallel={kind}", devices=devices, check=True)
    cfg = config_lib.load_json(os.path.join(workdir, "config.json"))
    run = workdir_lib.restore(cfg, workdir, gan)
    assert run.step == 3
    params[kind, devices] = jax.tree.leaves(run.state.params)
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["samples_000002.png", "samples_000003.png"]
  for a, b, c in zip(params["shard_map", 1], params["shard_map", 8], params["pmap", 8]):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    np.testing.assert_array_equal(c, b)  # pmap is jit(shard_map): the same program


@pytest.mark.slow
def test_two_processes_of_2_devices_give_the_parameters_of_one_of_4(tmp_path):
  one, two = steps_over_processes(tmp_path, "gan", 3)
  assert sorted(one) == sorted(two)
  for key in [k for k in one if k.startswith("param")] + ["samples"]:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)  # measured: 1.2e-7 apart
  # The eval's fakes come from each device's first latents, so its sums depend on the layout; its count does not.
  assert two["eval_num_examples"] == one["eval_num_examples"] == 500


@pytest.fixture
def classifier_dir(classifier_run):
  return classifier_run[0]


@pytest.mark.slow
def test_evaluate_measures_a_gan_with_the_classifier(cli, tmp_path, classifier_dir):
  workdir = str(tmp_path / "gan")
  cli("deconv_jax.train", f"--workdir={workdir}", *GAN_ARGS, check=True)
  result = cli(
    "deconv_jax.evaluate",
    f"--workdir={workdir}",
    f"--config.measure.classifier_workdir={classifier_dir}",
    "--config.measure.num_samples=200",
    check=True,
  )
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics["num_generated"] == 200 and metrics["num_real"] == 500
  assert metrics["fid"] > 0 and 1 <= metrics["classifier_score"] <= 10 and metrics["checkerboard_score"] > 0
  bad = cli("deconv_jax.evaluate", f"--workdir={workdir}", f"--config.measure.classifier_workdir={workdir}")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
    f"error: config.measure.classifier_workdir={workdir!r} is a 'gan' run, not a classifier run"
  )


@pytest.mark.slow
def test_gan_config_errors_are_one_line(cli, tmp_path):
  cases = [
    (["--config.generator.upsample=deconv"], "error: config.generator.upsample='deconv' is not allowed: one of"),
    (["--config.generator.resize_method=cubic"], "error: config.generator.resize_method='cubic' is not allowed"),
    (["--config.generator.base_size=5"], "error: config.generator cannot take images of shape (28, 28, 1)"),
  ]
  for args, message in cases:
    result = cli("deconv_jax.train", f"--workdir={tmp_path}/x", *GAN_ARGS, *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith(message), (args, result.stderr)


def test_tfds_gan_config_trains_under_mock_data(tmp_path, tfds):
  spec = importlib.util.spec_from_file_location("gan_tfds", os.path.join(REPO, "configs", "gan_tfds.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config()
  assert (c.dataset.source, c.dataset.name, c.task) == ("tfds", "mnist", "gan")
  small = tiny_gan()
  c.generator, c.discriminator = small.generator, small.discriminator
  c.num_train_steps, c.batch_size, c.eval_batch_size, c.sample_every_steps = 2, 8, 8, 2
  with tfds.testing.mock_data(num_examples=16):
    metrics = train.train_and_evaluate(c, str(tmp_path))
  assert metrics["num_examples"] == 16 and np.isfinite(metrics["d_loss"])
  assert os.listdir(tmp_path / "samples") == ["samples_000002.png"]
