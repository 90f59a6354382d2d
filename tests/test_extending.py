"""Extending touches one file and one registry line: a toy task and a toy up-sampler, added in-process, train.

The README's "Extending" promises that a new task is its own module plus one line in `tasks._TASKS`, and a new
up-sampler one entry of `models.UPSAMPLERS`. Each toy below is added only there and trained two steps through
`train.train_and_evaluate`, the function the command runs.
"""

import json
import os
import types

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from deconv_jax import config as config_lib
from deconv_jax import models, optimizers, parallel, tasks, train, xla_cpu
from deconv_jax.tasks import gan
from deconv_jax.workdir import RunDir


class _Linear(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, images_NHWC):
    return nn.Dense(self.num_classes)(images_NHWC.reshape(images_NHWC.shape[0], -1))


def _toy_task() -> types.SimpleNamespace:
  """A linear softmax classifier written against the `tasks.Task` protocol only."""

  def create_state(config, rng, info, total_steps):
    model = _Linear(info.num_classes)
    params = model.init(rng, jnp.zeros((1, *info.image_shape)))["params"]
    tx = optimizers.make(config.optimizer, total_steps)
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  def train_step(state, batch, rng, *, config, axis_name=None):
    def loss_sum(params, images_NHWC, labels_N):
      logits_NK = state.apply_fn({"params": params}, images_NHWC)
      return optax.softmax_cross_entropy_with_integer_labels(logits_NK, labels_N).sum(), logits_NK

    (loss, _), grads = xla_cpu.mean_and_grad(loss_sum, state.params, batch["image"], batch["label"])
    grads = parallel.pmean(grads, axis_name)
    return state.apply_gradients(grads=grads), parallel.pmean({"loss": loss}, axis_name)

  def eval_step(state, batch, *, axis_name=None):
    logits_NK = state.apply_fn({"params": state.params}, batch["image"])
    correct = (jnp.argmax(logits_NK, -1) == batch["label"]) * batch["mask"]
    return parallel.psum({"correct": correct.sum(), "count": batch["mask"].sum()}, axis_name)

  def eval_metrics(sums):
    return {"accuracy": sums["correct"] / sums["count"]}

  return types.SimpleNamespace(
    model_section="model",
    samples=None,
    generate_many=None,
    create_state=create_state,
    train_step=train_step,
    eval_step=eval_step,
    eval_metrics=eval_metrics,
  )


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def _two_steps(c):
  c.num_train_steps = 2
  c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
  c.batch_size = c.eval_batch_size = 16
  return c


def test_a_toy_task_registered_in_one_line_trains(tmp_path, monkeypatch):
  toy = _toy_task()
  assert isinstance(toy, tasks.Task)
  monkeypatch.setitem(tasks._TASKS, "toy", toy)  # the one registry line
  c = _two_steps(config_lib.base())
  c.task = "toy"
  workdir = str(tmp_path / "toy")
  metrics = train.train_and_evaluate(c, workdir)
  assert 0 <= metrics["accuracy"] <= 1 and RunDir(workdir).latest_step() == 2
  assert [r["step"] for r in _records(workdir, "train")] == [2] and np.isfinite(_records(workdir, "train")[0]["loss"])


@pytest.mark.slow
def test_a_toy_upsampler_registered_in_one_entry_trains_a_gan(tmp_path, monkeypatch):
  built = []

  def nearest_then_conv(g, x, width, *, use_bias, name):
    """The toy: repeat each pixel 2x2 (jnp.repeat, not ops.resize), then a stride-1 conv."""
    built.append((name, x.shape[1:3]))
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return models.Conv(width, g.kernel_size, use_bias=use_bias, name=name)(x)

  monkeypatch.setitem(models.UPSAMPLERS, "repeat_conv", models.Upsampler(nearest_then_conv, models.Conv))
  c = _two_steps(config_lib.base())
  c.task = "gan"
  c.generator.upsample = "repeat_conv"
  c.generator.features, c.discriminator.features = (8, 4), (4, 8)
  c.generator.base_features = 8
  c.sample_every_steps = 2
  workdir = str(tmp_path / "gan")
  metrics = train.train_and_evaluate(c, workdir)
  assert np.isfinite(metrics["d_loss"]) and RunDir(workdir).latest_step() == 2
  (record,) = _records(workdir, "train")
  assert record["step"] == 2 and np.isfinite(record["d_loss"]) and np.isfinite(record["g_loss"])
  # The generator that trained doubled 7x7 to 14x14 to 28x28 with the toy's layers.
  assert {("up1", (7, 7)), ("up2", (14, 14))} <= set(built)
  generator = gan.build_generator(c, types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10))
  assert generator.upsample == "repeat_conv"
