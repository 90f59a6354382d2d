"""Inverting a classifier's features (Dosovitskiy & Brox, "Inverting Visual Representations with CNNs", 2016).

A transposed-conv `models.Generator` (``config.generator``, unconditional) learns to reconstruct
an image from a FROZEN trained classifier's features at one layer (``config.inversion.layer``, a
name the classifier sows (`attribution.activations`): ``act{i}``, ``pool{i}``, ``hidden{j}``, ``logits``). The
features ``[N, F]`` (a map is flattened) are the generator's input: its Dense projects them to
``base_size x base_size x base_features``. What the generator can recover from a layer shows
what that layer keeps of the image.

The classifier is the classifier run in ``config.inversion.classifier_workdir`` (its saved config
and latest checkpoint). Its params live in the state as a frozen leaf (never optimized) and its
module as a static field, so an inversion checkpoint carries the classifier it was trained
against. Loss: mean squared error in ``[0, 1]`` space; eval: the autoencoder's PSNR and SSIM.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax import lax

from deconv_jax import attribution, models, optimizers, parallel, storage, xla_cpu
from deconv_jax import workdir as workdir_lib
from deconv_jax.config import ConfigError
from deconv_jax.tasks import autoencoder, classifier, gan

eval_metrics = autoencoder.eval_metrics
model_section = "generator"  # the config section named when the model cannot take the data's images
samples = None  # no sample grid: a reconstruction needs inputs
generate_many = None  # no generated images to measure
WORKDIR_KEY = "config.inversion.classifier_workdir"


class InversionState(struct.PyTreeNode):
  """step; the generator's params, BN statistics and opt_state; the frozen classifier's params.

  The generator and classifier modules, the optimizer and the layer name are static fields,
  as ``apply_fn`` is in flax's ``TrainState``.
  """

  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: Any
  classifier_params: dict[str, Any]
  generator: models.Generator = struct.field(pytree_node=False)
  classifier: models.CNN = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  layer: str = struct.field(pytree_node=False)


@functools.lru_cache(maxsize=4)
def _restore_classifier(workdir: str, step: int) -> tuple[models.CNN, Any, tuple[int, int, int]]:
  """(module, params as numpy, image shape) of the classifier run in ``workdir`` at checkpoint ``step``.

  Cached by (absolute workdir, step): `create_state` runs under ``jax.eval_shape`` before it runs
  for real, and a checkpoint at a given step never changes.
  """
  saved = workdir_lib.saved_config(workdir)
  try:
    run = workdir_lib.restore(saved, workdir, classifier, command="inversion")
  except ConfigError as e:
    raise ConfigError(f"{WORKDIR_KEY}={workdir!r}: {e}") from None
  model = classifier.build_model(saved, run.info.num_classes)
  return model, jax.device_get(run.state.params), tuple(run.info.image_shape)


def load_classifier(workdir: str, image_shape: tuple[int, int, int]) -> tuple[models.CNN, Any]:
  """The classifier module and its params (host arrays, read with numpy: works under ``jax.eval_shape``).

  ConfigError (one line, naming ``config.inversion.classifier_workdir``) if ``workdir`` has no
  config.json or no checkpoint, is not a classifier run, or was trained on images of another shape.
  """
  storage.check_reachable(workdir, WORKDIR_KEY)  # a malformed URL or a missing bucket named by its key
  saved = workdir_lib.saved_config(workdir)
  if saved is None:
    raise ConfigError(f"{WORKDIR_KEY}={workdir!r} has no config.json: give the workdir of a trained classifier run")
  if (task := saved.task) != "classifier":
    raise ConfigError(f"{WORKDIR_KEY}={workdir!r} is a {task!r} run, not a classifier run")
  step = workdir_lib.RunDir(workdir).latest_step()
  if step is None:
    raise ConfigError(f"{WORKDIR_KEY}={workdir!r} has no checkpoint: train the classifier first")
  model, params, trained_shape = _restore_classifier(storage.absolute(workdir), step)
  if trained_shape != tuple(image_shape):
    raise ConfigError(
      f"{WORKDIR_KEY}={workdir!r} holds a classifier of images {trained_shape}, config.dataset has {tuple(image_shape)}"
    )
  return model, params


def feature_sizes(classifier: models.CNN, classifier_params: Any, image_shape: tuple[int, ...]) -> dict[str, int]:
  """``{layer name: features per image}`` of every layer the classifier sows
  (`attribution.activations`), input to output.

  Shapes only, no compute.
  """
  names: list[str] = []  # in the order the network sows them (eval_shape's output dict is sorted)

  def acts(params: Any) -> dict[str, jax.Array]:
    out = attribution.activations(
      classifier, {"params": params}, jnp.zeros((1, *image_shape), jnp.float32), submodules=False
    )
    names.extend(out)
    return out

  shapes = jax.eval_shape(acts, classifier_params)
  return {name: math.prod(shapes[name].shape[1:]) for name in names}


def build_generator(config: ml_collections.ConfigDict, info: Any) -> models.Generator:
  """`models.Generator` from ``config.generator`` (as the GAN's), unconditional: it takes features, not labels."""
  return gan.build_generator(config, info).clone(num_classes=0)


def create_state(config: ml_collections.ConfigDict, rng: jax.Array, info: Any, total_steps: int) -> InversionState:
  """Initial state: a fresh generator, and the classifier of ``config.inversion.classifier_workdir``, frozen.

  ConfigError if that workdir holds no usable classifier run, or if ``config.inversion.layer`` is not one of its layers.
  """
  image_shape = tuple(info.image_shape)
  classifier, classifier_params = load_classifier(config.inversion.classifier_workdir, image_shape)
  sizes = feature_sizes(classifier, classifier_params, image_shape)
  layer = config.inversion.layer
  if layer not in sizes:
    raise ConfigError(
      f"config.inversion.layer={layer!r} is not allowed: one of {tuple(sizes)} "
      f"(the classifier in {WORKDIR_KEY}={config.inversion.classifier_workdir!r})"
    )
  generator = build_generator(config, info)
  g_vars = generator.init(rng, jnp.zeros((1, sizes[layer]), jnp.float32))
  tx = optimizers.make(config.optimizer, total_steps)
  return InversionState(
    step=jnp.zeros((), jnp.int32),
    params=g_vars["params"],
    batch_stats=g_vars.get("batch_stats", {}),
    opt_state=tx.init(g_vars["params"]),
    classifier_params=jax.tree.map(jnp.asarray, classifier_params),
    generator=generator,
    classifier=classifier,
    tx=tx,
    layer=layer,
  )


def features(state: InversionState, images_NHWC: jax.Array) -> jax.Array:
  """The frozen classifier's features at ``state.layer``, flattened: images ``[N, H, W, C]`` -> ``[N, F]``.

  Under ``lax.stop_gradient``: no gradient reaches the classifier (its params are not optimized either way).
  """
  params = {"params": state.classifier_params}
  acts = attribution.activations(state.classifier, params, images_NHWC, submodules=False)[state.layer]
  return lax.stop_gradient(acts.reshape(acts.shape[0], -1))


def train_step(
  state: InversionState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  axis_name: str | None = None,
) -> tuple[InversionState, dict[str, jax.Array]]:
  """One optimizer step of the generator on MSE(generator(features(image)), image), images [N, H, W, C] in [0, 1].

  Batch statistics are averaged over ``axis_name``, so a step on 8 devices equals the step on one.
  ``rng`` and ``config`` are unused (the protocol's signature).
  """
  del rng, config
  generator = state.generator.clone(bn_axis_name=axis_name)
  images_NHWC = batch["image"]
  features_NF = features(state, images_NHWC)

  def loss_sum(params, features_NF, images_NHWC):  # per-image mean squared error, summed over the batch
    g_vars = gan.variables(params, state.batch_stats)
    out_NHWC, updates = generator.apply(g_vars, features_NF, train=True, mutable=["batch_stats"])
    recon_NHWC = gan.to_unit_range(out_NHWC, generator.output_activation, clip=False)
    return jnp.sum(jnp.mean((recon_NHWC - images_NHWC) ** 2, axis=(1, 2, 3))), updates.get("batch_stats", {})

  # Batch norm in training mode couples the batch: it is never split.
  (loss, batch_stats), grads = xla_cpu.mean_and_grad(loss_sum, state.params, features_NF, images_NHWC, coupled=True)
  grads = parallel.pmean(grads, axis_name)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  return new_state, parallel.pmean({"loss": loss}, axis_name)


def reconstruct(state: InversionState, images_NHWC: jax.Array) -> jax.Array:
  """Reconstructions ``[N, H, W, C]`` in ``[0, 1]`` (clipped) from the features of images ``[N, H, W, C]``.

  The generator runs in inference mode: batch norm uses the running statistics.
  """
  out_NHWC = state.generator.apply(gan.variables(state.params, state.batch_stats), features(state, images_NHWC))
  return gan.to_unit_range(out_NHWC, state.generator.output_activation)


def eval_step(
  state: InversionState, batch: dict[str, jax.Array], *, axis_name: str | None = None
) -> dict[str, jax.Array]:
  """`autoencoder.reconstruction_sums` of ``batch`` (``image`` [N, H, W, C], ``mask`` [N]), psum-ed over axis_name."""
  sums = autoencoder.reconstruction_sums(reconstruct(state, batch["image"]), batch["image"], batch["mask"])
  return parallel.psum(sums, axis_name)
