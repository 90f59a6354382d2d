"""The GAN task: steps that change both networks, latents keyed by global index, samples, measurements end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deconv_jax import config as config_lib
from deconv_jax import data
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
