"""optax optimizers and learning-rate schedules from ``config.optimizer``; the gradient of a batch mean."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from deconv_jax import ops


def learning_rate(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """``constant``, ``cosine`` (to 0 at ``total_steps``) or ``warmup_cosine`` (linear warm-up, then cosine)."""
  lr = opt_cfg.learning_rate
  if opt_cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if opt_cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, decay_steps=max(total_steps, 1))
  if opt_cfg.schedule == "warmup_cosine":
    warmup = min(opt_cfg.warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=max(total_steps, 1))
  raise ValueError(f"config.optimizer.schedule={opt_cfg.schedule!r} is not allowed")


def make(opt_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by ``opt_cfg.name`` with the schedule from `learning_rate`."""
  schedule = learning_rate(opt_cfg, total_steps)
  if opt_cfg.name == "adam":
    return optax.adam(schedule, b1=opt_cfg.b1)
  if opt_cfg.name == "adamw":
    return optax.adamw(schedule, b1=opt_cfg.b1, weight_decay=opt_cfg.weight_decay)
  if opt_cfg.name == "sgd":
    return optax.sgd(schedule)
  if opt_cfg.name == "momentum":
    return optax.sgd(schedule, momentum=opt_cfg.momentum)
  raise ValueError(f"config.optimizer.name={opt_cfg.name!r} is not allowed")


# Images per gradient chunk on CPU. Forward and backward of 32 of the classifier's 28x28 images keep
# their maps in cache: its batch-256 step ran at 3,512 images/s in chunks of 32 against 3,216 whole
# (XLA's own convolution kernels). With the host-memory setting, chunks of 32, 64, 128 and 256 ran
# at 4,978, 4,379, 4,992 and 3,196 images/s (one alternating run): 128 ties 32 within the noise, so 32 stays.
CPU_CHUNK = 32


def mean_and_grad(
  sum_fn: Callable[..., tuple[jax.Array, Any]], params: Any, *arrays: jax.Array
) -> tuple[tuple[jax.Array, Any], Any]:
  """``value_and_grad`` of the batch mean, from ``sum_fn(params, *arrays) -> (sum over the batch, aux)``.

  ``arrays`` (None passes through) and ``aux`` have the batch as their leading axis. On CPU a
  batch larger than `CPU_CHUNK` is taken in consecutive chunks of that many rows, whose sums and
  gradients are added (the same sum in another float order); on other backends, and inside
  ``ops.plain_xla()``, in one piece.
  """
  batch = next(a for a in arrays if a is not None).shape[0]

  def whole(params, *arrays):
    (total, aux), grads = jax.value_and_grad(sum_fn, has_aux=True)(params, *arrays)
    return total, aux, grads

  def chunked(params, *arrays):
    total, auxes, grads = None, [], None
    for start in range(0, batch, CPU_CHUNK):  # unrolled: a lax.scan over the chunks ran slower on XLA:CPU
      chunk = tuple(None if a is None else a[start : start + CPU_CHUNK] for a in arrays)
      if grads is not None:  # a chunk starts when the last one is done (XLA:CPU still gives each its own buffers)
        chunk, grads = lax.optimization_barrier((chunk, grads))
      chunk_total, aux, chunk_grads = whole(params, *chunk)
      auxes.append(aux)
      total = chunk_total if total is None else total + chunk_total
      grads = chunk_grads if grads is None else jax.tree.map(jnp.add, grads, chunk_grads)
    return total, jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *auxes), grads

  if batch <= CPU_CHUNK or not ops.fast_paths():
    total, aux, grads = whole(params, *arrays)
  else:
    total, aux, grads = lax.platform_dependent(params, *arrays, cpu=chunked, default=whole)
  return (total / batch, aux), jax.tree.map(lambda g: g / batch, grads)
