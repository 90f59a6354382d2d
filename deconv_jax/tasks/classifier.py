"""Classification: the CNN, softmax cross-entropy, accuracy."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax import lax

from deconv_jax import augment, models, optimizers, parallel, xla_cpu

model_section = "model"  # the config section named when the model cannot take the data's images
samples = None  # no sample grid
generate_many = None  # no generated images to measure


class TrainState(train_state.TrainState):
  """step, params, opt_state (and the static apply_fn, tx)."""


def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models.CNN:
  return models.cnn_from_config(config.model, num_classes)


def create_state(config: ml_collections.ConfigDict, rng: jax.Array, info: Any, total_steps: int) -> TrainState:
  """Initial state for images of ``info.image_shape`` and ``info.num_classes`` classes."""
  model = build_model(config, info.num_classes)
  params = model.init(rng, jnp.zeros((1, *info.image_shape), jnp.float32))["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=optimizers.make(config.optimizer, total_steps))


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam (or other) step on ``batch`` (``image`` [N, H, W, C] float32, ``label`` [N] int32).

  ``rng`` is the same on every device; each image's augmentation key is folded
  from its index in the global batch, so any device split gives the same step.
  """
  images_NHWC, labels_N = batch["image"], batch["label"]
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * images_NHWC.shape[0]
  aug = config.augment
  if aug.max_shift or aug.max_rotation or aug.max_scale:
    images_NHWC = augment.augment_batch(
      rng, images_NHWC, offset, max_shift=aug.max_shift, max_rotation=aug.max_rotation, max_scale=aug.max_scale
    )

  def loss_sum(params, images_NHWC, labels_N):
    logits_NK = state.apply_fn({"params": params}, images_NHWC)
    return optax.softmax_cross_entropy_with_integer_labels(logits_NK, labels_N).sum(), logits_NK

  (loss, logits_NK), grads = xla_cpu.mean_and_grad(loss_sum, state.params, images_NHWC, labels_N)
  grads = parallel.pmean(grads, axis_name)
  metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits_NK, -1) == labels_N)}
  return state.apply_gradients(grads=grads), parallel.pmean(metrics, axis_name)


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, axis_name: str | None = None) -> dict[str, jax.Array]:
  """Sums over the real rows of ``batch`` (``mask`` [N] is 0 for padding): loss, correct, count."""
  logits_NK = state.apply_fn({"params": state.params}, batch["image"])
  mask_N = batch["mask"]
  losses_N = optax.softmax_cross_entropy_with_integer_labels(logits_NK, batch["label"])
  sums = {
    "loss": jnp.sum(losses_N * mask_N),
    "correct": jnp.sum((jnp.argmax(logits_NK, -1) == batch["label"]) * mask_N),
    "count": jnp.sum(mask_N),
  }
  return parallel.psum(sums, axis_name)


def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
  """``{"accuracy", "loss", "num_examples"}`` from summed `eval_step` outputs."""
  count = max(float(sums["count"]), 1.0)
  return {
    "accuracy": float(sums["correct"]) / count,
    "loss": float(sums["loss"]) / count,
    "num_examples": round(float(sums["count"])),
  }
