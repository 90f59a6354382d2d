"""Generated images measured with our own trained classifier: FID, classifier score, checkerboard score.

FID and the classifier score (the Inception Score with an MNIST classifier) need a
feature extractor; here it is a classifier run of this codebase, named by its
workdir: its penultimate features (``hidden{last}``) for FID and its logits for the
score. Numbers compare only with numbers from the same classifier run and the same
sample counts, which every result states (``num_generated``, ``num_real``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deconv_jax import attribution, data, quality, storage
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.tasks import classifier


class Featurizer:
  """A trained classifier run's penultimate features ``[N, F]`` and logits ``[N, K]``, batched and jitted."""

  def __init__(self, workdir: str, key: str = "measure.classifier_workdir"):
    if workdir:
      storage.check_reachable(workdir, f"config.{key}")  # a malformed URL or a missing bucket named by its key
    config = workdir_lib.saved_config(workdir) if workdir else None
    if config is None:
      raise config_lib.ConfigError(f"config.{key}={workdir!r} is not a training run (no config.json)")
    if config.task != "classifier":
      raise config_lib.ConfigError(f"config.{key}={workdir!r} is a {config.task!r} run, not a classifier run")
    run = workdir_lib.restore(config, workdir, classifier, command="measure")
    self.image_shape = run.info.image_shape
    model = classifier.build_model(config, run.info.num_classes)
    layer = f"hidden{len(model.dense)}" if model.dense else f"pool{len(model.features)}"
    variables = {"params": jax.device_put(run.state.params)}

    @jax.jit
    def features_and_logits(images):
      acts = attribution.activations(model, variables, images, submodules=False)
      return acts[layer].reshape(images.shape[0], -1), acts["logits"]

    self._fn = features_and_logits

  def __call__(self, images_NHWC: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    if tuple(images_NHWC.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"images {images_NHWC.shape[1:]} do not match the classifier's {self.image_shape}")
    features, logits = [], []
    for start in range(0, len(images_NHWC), batch_size):
      chunk = images_NHWC[start : start + batch_size]
      pad = batch_size - len(chunk)  # one compiled shape for every chunk
      f, lg = jax.device_get(self._fn(jnp.pad(jnp.asarray(chunk), ((0, pad), (0, 0), (0, 0), (0, 0)))))
      features.append(f[: len(chunk)])
      logits.append(lg[: len(chunk)])
    return np.concatenate(features), np.concatenate(logits)


def generator_quality(task: Any, state: Any, config: ml_collections.ConfigDict) -> dict[str, float]:
  """FID, classifier score and checkerboard score of ``config.measure.num_samples`` images of ``task.generate_many``.

  Measured against every image of ``config.measure.real_*`` (default: the eval split) with the
  classifier run in ``config.measure.classifier_workdir``.
  """
  featurizer = Featurizer(config.measure.classifier_workdir)
  generated = task.generate_many(state, config.measure.num_samples)
  return generated_quality(generated, real_images(config), featurizer)


def real_images(config: Any) -> np.ndarray:
  """The real images generated ones are measured against: ``config.measure.real_*``, else the eval split."""
  m = config.measure
  if not m.real_source:
    return all_images(config.dataset, config.dataset.eval_split)
  dataset = ml_collections.ConfigDict(config.dataset.to_dict())
  dataset.source, dataset.data_dir = m.real_source, m.real_data_dir
  return all_images(dataset, m.real_split)


def all_images(dataset_cfg: Any, split: str) -> np.ndarray:
  """Every image of a split ``[N, H, W, C]`` in ``[0, 1]``, in order."""
  source = data.get_source(dataset_cfg, split)
  batches = data.eval_batches(source, global_batch_size=1000)
  return np.concatenate([np.asarray(b["image"])[np.asarray(b["mask"]) > 0] for b in batches])


def generated_quality(generated_NHWC: np.ndarray, real_NHWC: np.ndarray, featurizer: Featurizer) -> dict[str, float]:
  """FID (generated vs real), classifier score of the generated images, and their checkerboard score vs real."""
  gen_features, gen_logits = featurizer(generated_NHWC)
  real_features, _ = featurizer(real_NHWC)
  return {
    "fid": quality.fid(gen_features, real_features),
    "classifier_score": quality.classifier_score(gen_logits),
    "checkerboard_score": quality.checkerboard_score(generated_NHWC, real_NHWC),
    "num_generated": len(generated_NHWC),
    "num_real": len(real_NHWC),
  }
