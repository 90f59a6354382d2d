"""Whole train steps, timed in the protocol of the peer benchmark (``../shared/bench/peers/common.py``).

The records carry the peers' fields, so the peers' ``summarize.py`` tables this project's steps beside
theirs from one file. A step is the program `train` runs on one device (`parallel.DataParallel`), on
synthetic ``[N, 28, 28, 1]`` data already on the device, so that the input pipeline is not timed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from deconv_jax import config as config_lib
from deconv_jax import parallel, tasks, xla_cpu
from deconv_jax.experiments.speed import timing

INFO = types.SimpleNamespace(image_shape=(28, 28, 1), num_classes=10)  # the synthetic data every step is timed on
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "configs")


def peers_dcgan_config() -> ml_collections.ConfigDict:
  """The peers' DCGAN as a project config: unconditional, no batch norm, Adam 2e-4 (b1 0.5) for G and D, batch 128.

  G: Dense 7x7x128, ConvT 64 4x4 s2, ConvT 1 4x4 s2 (tanh); D: Conv 64, Conv 128 4x4 s2, Dense 1.
  """
  c = config_lib.base()
  c.task = "gan"
  c.batch_size = 128
  c.optimizer.name, c.optimizer.learning_rate, c.optimizer.b1 = "adam", 2e-4, 0.5
  g = c.generator
  g.latent_dim, g.base_size, g.base_features, g.features = 100, 7, 128, (64,)
  g.upsample, g.kernel_size, g.batch_norm, g.output_activation = "transpose", 4, False, "tanh"
  g.conditional, g.out_strides = False, 2  # the second transposed conv makes the image
  c.discriminator.features, c.discriminator.kernel_size = (64, 128), 4
  return c


def project_gan_config() -> ml_collections.ConfigDict:
  """``configs/gan.py``'s config (the README's GAN), read from the repository."""
  return config_lib.load_config_file(os.path.join(CONFIGS_DIR, "gan.py"))


def _classifier_flops() -> int:
  """The peers' count for their classifier (the default CNN): 3 forward passes per image."""
  h, c, macs = 28, 1, 0
  for cout in (32, 64, 128):
    h -= 2
    macs += h * h * cout * 9 * c
    c, h = cout, h // 2
  return 3 * 2 * (macs + h * h * c * 512 + 512 * 10)


def _dcgan_flops() -> int:
  """The peers' count for their DCGAN: per batch element 3 G passes and 8 D passes (G forward once; D on real and
  fake, forward, input and kernel gradients; D forward and input gradient for G's update)."""
  g = 100 * 7 * 7 * 128 + 7 * 7 * 128 * 16 * 64 + 14 * 14 * 64 * 16
  d = 14 * 14 * 64 * 16 + 7 * 7 * 128 * 16 * 64 + 7 * 7 * 128
  return 3 * 2 * g + 8 * 2 * d


@dataclasses.dataclass(frozen=True)
class StepModel:
  """A train step the experiment times: its task, its config (None: the ``--config`` classifier's), the batch
  sizes it is timed at (None: ``--batch_sizes``) and the peers' FLOP count per image (2 x the MACs of every conv
  and dense, padding taps too; None where the peers have no such network)."""

  task: str
  config: Callable[[], ml_collections.ConfigDict] | None
  batch_size: Callable[[], int] | None
  peers_flops: Callable[[], int] | None


# Keyed by the ``model`` field of the records: the peers' names for the networks they time too
# ("seedcnn", "gan"), and the path of this project's own GAN config.
MODELS = {
  "seedcnn": StepModel("classifier", None, None, _classifier_flops),
  "gan": StepModel("gan", peers_dcgan_config, lambda: 128, _dcgan_flops),
  "configs/gan.py": StepModel("gan", project_gan_config, lambda: project_gan_config().batch_size, None),
}


def peers_flops(model: str, config: ml_collections.ConfigDict) -> int | None:
  """FLOPs per image of one train step as the peers count them; None unless the step is one of their networks."""
  spec = MODELS[model]
  if spec.peers_flops is None or (spec.config is None and not _is_default_cnn(config)):
    return None
  return spec.peers_flops()


def task_and_config(model: str, config: ml_collections.ConfigDict | None) -> tuple[Any, ml_collections.ConfigDict]:
  """The task and config a ``model`` of `MODELS` trains; ``config`` (default `config.base()`) for the classifier."""
  spec = MODELS[model]
  if spec.config is not None:
    return tasks.get(spec.task), spec.config()
  return tasks.get(spec.task), config_lib.base() if config is None else config


def _is_default_cnn(config: ml_collections.ConfigDict) -> bool:
  return config.model.to_dict() == config_lib.base().model.to_dict()


class StepTimer:
  """One task's train step, compiled by `parallel.DataParallel` as `train` compiles it, on fixed synthetic data.

  ``plain``: traced inside ``xla_cpu.plain_xla()``, so compiled with XLA's default options and no chunks.
  """

  def __init__(self, task: Any, config: ml_collections.ConfigDict, batch_size: int, plain: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    self.rng = jax.random.key(seed)
    self.batch_size, self.plain = batch_size, plain
    with self._context():  # a new function for each path: jit traces it inside its own context
      dp = parallel.DataParallel()
      self.batch = dp.put_batch(
        {
          "image": rng.random((batch_size, *INFO.image_shape), np.float32),
          "label": rng.integers(0, INFO.num_classes, (batch_size,), np.int32),
        }
      )
      self.state = dp.put_state(task.create_state(config, jax.random.key(seed), INFO, total_steps=1000))
      self.step_fn = dp.compile_train_step(
        lambda s, b, r, axis_name: task.train_step(s, b, r, config=config, axis_name=axis_name)
      )
      self.xla_flops = _xla_flops(self.step_fn.lower(self.state, self.batch, self.rng).compile())

  def _context(self):
    return xla_cpu.plain_xla() if self.plain else contextlib.nullcontext()

  def step(self) -> Any:
    with self._context():
      self.state, metrics = self.step_fn(self.state, self.batch, self.rng)
    return metrics

  def sync(self, metrics: Any) -> None:
    jax.block_until_ready((self.state, metrics))


def _xla_flops(compiled: Any) -> float | None:
  try:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis["flops"])
  except (KeyError, TypeError, IndexError, AttributeError):  # not every backend counts
    return None


def train_step_benchmark(
  model: str,
  batch_size: int,
  *,
  repeats: int = 5,
  target_s: float = 3.0,
  config: ml_collections.ConfigDict | None = None,
  paths: Sequence[str] = ("fast", "plain"),
) -> list[dict[str, Any]]:
  """Images/s of one train step of ``model`` (a key of `MODELS`), the fast path beside the plain one: one
  peers-protocol record per path.

  Protocol (the peers' ``run_bench``): the first step (trace, compile, run) and the second are
  timed, 3 warm-up steps, a 3-step calibration sets ``n`` so that ``n`` steps take about
  ``target_s``; then ``repeats`` runs of ``n`` steps, blocked on the last step's state, the paths
  alternating (A, B, A, B, ...) so the machine's noise hits both alike.
  """
  task, config = task_and_config(model, config)
  runs = []
  for path in paths:
    start = time.perf_counter()
    timed = StepTimer(task, config, batch_size, plain=path == "plain")
    timed.sync(timed.step())
    first = time.perf_counter() - start
    start = time.perf_counter()
    timed.sync(timed.step())
    second = time.perf_counter() - start
    for _ in range(3):
      metrics = timed.step()
    timed.sync(metrics)
    start = time.perf_counter()
    for _ in range(3):
      metrics = timed.step()
    timed.sync(metrics)
    n = max(3, math.ceil(target_s / max((time.perf_counter() - start) / 3, 1e-9)))
    runs.append((path, timed, first, second, n, []))
  for _ in range(repeats):
    for _, timed, _, _, n, seconds in runs:
      start = time.perf_counter()
      for _ in range(n):
        metrics = timed.step()
      timed.sync(metrics)
      seconds.append(time.perf_counter() - start)

  records = []
  for path, timed, first, second, n, seconds in runs:
    ips = [n * batch_size / t for t in seconds]
    # FLOPs as the peers count them for their two networks; for others, XLA's count of the compiled
    # step (it skips padding taps, and on GPU leaves out the convolutions that cuDNN runs).
    xla_per_image = None if timed.xla_flops is None else timed.xla_flops / batch_size
    dense = peers_flops(model, config)
    per_image, flops_source = (dense, "peers_dense_count") if dense else (xla_per_image, "xla_cost_analysis")
    records.append(
      {
        "kind": "train_step",
        "framework": "project",
        "mode": path,
        "model": model,
        "batch": batch_size,
        **timing.machine_record(),
        "xla_flops_per_image": xla_per_image,
        "first_step_s": round(first, 4),
        "second_step_s": round(second, 4),
        "steps_per_repeat": n,
        "repeats": repeats,
        "repeat_s": [round(t, 4) for t in seconds],
        "ips_all": [round(v, 1) for v in ips],
        "ips_median": round(statistics.median(ips), 1),
        "ips_min": round(min(ips), 1),
        "ips_max": round(max(ips), 1),
        "step_ms_median": round(1e3 * statistics.median(seconds) / n, 3),
        "train_flops_per_image": per_image,
        "flops_source": flops_source,
        "achieved_gflops": None if per_image is None else round(statistics.median(ips) * per_image / 1e9, 2),
      }
    )
  return records
