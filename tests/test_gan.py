"""The GAN task: steps that change both networks, latents keyed by global index, samples, measurements end to end."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import on_two_devices

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


def test_generate_many_is_generate_on_the_measure_seed_s_latents_in_batches():
  """What `evaluate` measures: ``n`` images from `MEASURE_SEED`'s latents (never the grid's), classes in turn when
  conditional, the same whatever the batch size; and `generate` with no labels draws the classes in turn too."""
  five = data.DatasetInfo(image_shape=(28, 28, 1), num_classes=5, num_examples=16)
  assert gan.MEASURE_SEED != gan.SAMPLE_SEED
  for conditional, info in [(False, INFO), (True, five)]:
    state = gan.create_state(tiny_gan(conditional=conditional), jax.random.key(0), info, 10)
    z = jax.random.normal(jax.random.key(gan.MEASURE_SEED), (7, state.latent_dim))
    labels = jnp.arange(7) % 5 if conditional else None
    generate = jax.jit(gan.generate)
    expected = generate(state, z, labels)
    got = gan.generate_many(state, 7, batch_size=3)
    assert isinstance(got, np.ndarray) and got.shape == (7, 28, 28, 1)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(gan.generate_many(state, 7), expected, atol=1e-6)  # one batch
    if conditional:
      np.testing.assert_allclose(generate(state, z), expected, atol=1e-6)  # labels 0, 1, ..., 4, 0, 1 by default


def test_ranges_between_the_data_and_the_generator_and_its_variables():
  data_images = jnp.array([0.0, 0.25, 1.0])
  np.testing.assert_array_equal(gan.to_model_range(data_images, "tanh"), [-1.0, -0.5, 1.0])
  np.testing.assert_array_equal(gan.to_model_range(data_images, "sigmoid"), data_images)
  out = jnp.array([-2.0, -1.0, -0.5, 1.0, 1.5])
  np.testing.assert_array_equal(gan.to_unit_range(out, "tanh"), [0.0, 0.0, 0.25, 1.0, 1.0])  # clipped by default
  np.testing.assert_array_equal(gan.to_unit_range(out, "tanh", clip=False), [-0.5, 0.0, 0.25, 1.0, 1.25])
  np.testing.assert_array_equal(gan.to_unit_range(out, "sigmoid"), [0.0, 0.0, 0.0, 1.0, 1.0])
  params, stats = {"w": 1}, {"mean": 2}
  assert gan.variables(params, stats) == {"params": params, "batch_stats": stats}
  assert gan.variables(params, {}) == {"params": params}  # a generator without BatchNorm has no statistics


def test_the_sample_grid_is_64_latents_fixed_by_seed_one_class_per_column():
  """Unconditional: 8 x 8 from ``sample_latents``. Conditional over K classes: ``64 // K`` rows, column k class k;
  one row where there are more classes than 32 (CIFAR-100's 100 included)."""
  five, hundred = (data.DatasetInfo(image_shape=(28, 28, 1), num_classes=k, num_examples=16) for k in (5, 100))
  for conditional, info, shape in [(False, INFO, (8, 8)), (True, five, (12, 5)), (True, hundred, (1, 100))]:
    config = tiny_gan(conditional=conditional, output_activation="sigmoid")
    state = gan.create_state(config, jax.random.key(0), info, 10)
    samples = jax.jit(gan.samples)  # one compile, not one per eager op
    grid = samples(state)
    assert grid.shape == (*shape, 28, 28, 1), conditional
    np.testing.assert_array_equal(samples(state), grid)  # the same latents at every call
    z = gan.sample_latents(state, shape[0] * shape[1])
    np.testing.assert_array_equal(z, jax.random.normal(jax.random.key(gan.SAMPLE_SEED), z.shape))
    if conditional:  # column k is class k: the same as generating class k directly
      column = jax.jit(gan.generate)(state, z[3 :: shape[1]], jnp.full((shape[0],), 3))
      np.testing.assert_allclose(grid[:, 3], column, atol=1e-5)
    else:
      np.testing.assert_allclose(grid.reshape(64, 28, 28, 1), jax.jit(gan.generate)(state, z), atol=1e-6)


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


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_each_player_steps_on_the_gradient_of_its_own_loss(conditional):
  # With plain SGD a step is params - lr * gradient, so both updates can be recomputed from the losses'
  # definitions: D on -log D(x) - log(1 - D(G(z))) with G's fakes held fixed, then G on -log D(G(z)) through the
  # updated D (softplus(-l) = -log sigmoid(l) of D's logits l). A flipped sign, a gradient of the wrong loss, a
  # G step against the old D, or a D gradient leaking into G's step each move the params elsewhere. Conditional:
  # both players see each real image's label, and the fakes are drawn for those labels. In the fast tier, as the
  # test of what the step is for: the direction test passes some wrong losses whose step lowers the right one.
  config = tiny_gan(conditional=conditional)
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.1
  state = gan.create_state(config, jax.random.key(0), INFO, 10)
  images, rng = batch(), jax.random.key(1)
  after, metrics = jax.jit(lambda s, b, r: gan.train_step(s, b, r, config=config))(state, images, rng)
  z = gan._latents(rng, 0, 16, config.generator.latent_dim)  # the step's latents
  real = images["image"] * 2 - 1  # tanh's range
  labels = images["label"] if conditional else None

  def fake(g_params):  # G in training mode: batch statistics
    g_vars = {"params": g_params, "batch_stats": state.batch_stats}
    return state.generator.apply(g_vars, z, labels, train=True, mutable=["batch_stats"])[0]

  def logits(d_params, x):
    return state.discriminator.apply({"params": d_params}, x, labels)

  def d_loss(d_params, fakes):
    return jnp.mean(jax.nn.softplus(-logits(d_params, real)) + jax.nn.softplus(logits(d_params, fakes)))

  def g_loss(g_params, d_params):
    return jnp.mean(jax.nn.softplus(-logits(d_params, fake(g_params))))

  @jax.jit
  def expected(params):
    sgd = lambda p, g: jax.tree.map(lambda p, g: p - 0.1 * g, p, g)
    d_new = sgd(params["discriminator"], jax.grad(d_loss)(params["discriminator"], fake(params["generator"])))
    return {"discriminator": d_new, "generator": sgd(params["generator"], jax.grad(g_loss)(params["generator"], d_new))}

  want = expected(state.params)
  for net in ("discriminator", "generator"):
    for got, wanted in zip(jax.tree.leaves(after.params[net]), jax.tree.leaves(want[net]), strict=True):
      np.testing.assert_allclose(got, wanted, rtol=1e-4, atol=1e-6, err_msg=net)
  assert int(after.step) == 1 and set(after.opt_state) == {"generator", "discriminator"}
  # The metrics: each player's loss (G's through the updated D) and D's mean belief in the real and the fake.
  fakes = fake(state.params["generator"])
  d_old = state.params["discriminator"]
  expected_metrics = {
    "d_loss": d_loss(d_old, fakes),
    "g_loss": g_loss(state.params["generator"], want["discriminator"]),
    "d_real": jnp.mean(jax.nn.sigmoid(logits(d_old, real))),
    "d_fake": jnp.mean(jax.nn.sigmoid(logits(d_old, fakes))),
  }
  assert set(metrics) == set(expected_metrics)
  for name, value in expected_metrics.items():
    np.testing.assert_allclose(metrics[name], value, rtol=1e-5, err_msg=name)
  # G's BatchNorm statistics move by its one forward pass on the step's latents, with the params before the step.
  g_vars = {"params": state.params["generator"], "batch_stats": state.batch_stats}
  stats = state.generator.apply(g_vars, z, labels, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  assert jax.tree.leaves(stats)
  for got, wanted in zip(jax.tree.leaves(after.batch_stats), jax.tree.leaves(stats), strict=True):
    np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-6)


def test_latents_are_keyed_by_global_index():
  rng = jax.random.key(3)
  whole = gan._latents(rng, 0, 8, 5)
  halves = jnp.concatenate([gan._latents(rng, 0, 4, 5), gan._latents(rng, 4, 4, 5)])
  np.testing.assert_array_equal(whole, halves)


def test_a_step_over_two_devices_is_the_step_on_one():
  """Two devices, as `jax.vmap` with the step's axis name stands in for them: each draws the latents of its images'
  global indices and batch norm averages its statistics over both, so the step equals the one-device step."""
  c = tiny_gan()
  state = gan.create_state(c, jax.random.key(0), INFO, 10)
  rng, images = jax.random.key(1), batch()
  step = functools.partial(gan.train_step, rng=rng, config=c)
  one, one_metrics = jax.jit(step)(state, images)
  two, two_metrics = on_two_devices(step, state, images)
  for got, want in zip(jax.tree.leaves((two.params, two.batch_stats)), jax.tree.leaves((one.params, one.batch_stats))):
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-6)
  for key in ("d_loss", "g_loss"):
    np.testing.assert_allclose(two_metrics[key][0], one_metrics[key], rtol=1e-5)


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "conditional"])
def test_the_eval_step_is_the_discriminator_on_the_real_rows_and_as_many_fakes(conditional):
  """Sums over the real rows (mask 1) of the discriminator's loss on each real image and on a fake drawn from the
  grid's latents (the same at every eval), in the model's range, and of its right calls (real > 0, fake < 0)."""
  c = tiny_gan(conditional=conditional)
  state = gan.create_state(c, jax.random.key(0), INFO, 10)
  images = batch()
  mask = jnp.ones(16).at[12:].set(0.0)
  sums = jax.jit(gan.eval_step)(state, {**images, "mask": mask})
  labels = images["label"] if conditional else None
  fakes = gan.generate(state, gan.sample_latents(state, 16), labels)  # in [0, 1], as the data
  d = lambda x: state.discriminator.apply({"params": state.params["discriminator"]}, x * 2 - 1, labels)  # tanh's range
  real_logits, fake_logits = d(images["image"]), d(fakes)
  losses = jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)
  np.testing.assert_allclose(sums["d_loss"], jnp.sum(losses[:12]), rtol=1e-5)
  assert float(sums["real_correct"]) == float(jnp.sum(real_logits[:12] > 0))
  assert float(sums["fake_correct"]) == float(jnp.sum(fake_logits[:12] < 0))
  assert float(sums["count"]) == 12
  metrics = gan.eval_metrics(jax.device_get(sums))
  assert metrics["num_examples"] == 12 and metrics["d_loss"] == pytest.approx(float(jnp.mean(losses[:12])), rel=1e-5)
  assert metrics["d_real_accuracy"] == float(sums["real_correct"]) / 12

  # A discriminator that cannot tell (every logit exactly 0) calls nothing right, at a loss of 2 log 2 an image.
  blind = state.replace(
    params={**state.params, "discriminator": jax.tree.map(jnp.zeros_like, state.params["discriminator"])}
  )
  metrics = gan.eval_metrics(jax.device_get(jax.jit(gan.eval_step)(blind, {**images, "mask": mask})))
  assert metrics == pytest.approx(
    {"d_loss": 2 * np.log(2), "d_real_accuracy": 0.0, "d_fake_accuracy": 0.0, "num_examples": 12}, rel=1e-6
  )
  sums = {"d_loss": 3.0, "real_correct": 2.0, "fake_correct": 1.0, "count": 4.0}
  assert gan.eval_metrics(sums) == {"d_loss": 0.75, "d_real_accuracy": 0.5, "d_fake_accuracy": 0.25, "num_examples": 4}
  one = {"d_loss": 0.5, "real_correct": 1.0, "fake_correct": 0.0, "count": 1.0}  # one real row: its own values
  assert gan.eval_metrics(one) == {"d_loss": 0.5, "d_real_accuracy": 1.0, "d_fake_accuracy": 0.0, "num_examples": 1}
  assert gan.eval_metrics({"d_loss": 0.0, "real_correct": 0.0, "fake_correct": 0.0, "count": 0.0})["d_loss"] == 0.0


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
