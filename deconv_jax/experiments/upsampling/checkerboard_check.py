"""The checkerboard score's own check, where the artifacts are known: generators at initialization (random and
equal kernels) and real digits with stride-2 patterns added."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deconv_jax import data, quality, tasks
from deconv_jax.experiments.upsampling import stats, variants

AMPLITUDES = (0.0, 0.01, 0.03, 0.1, 0.3)  # of the stride-2 patterns added to real digits
NUM_CHECKED = 500  # images per generator


def period_two_patterns(h: int, w: int) -> dict[str, np.ndarray]:
  """The stride-2 patterns ``[h, w]`` whose power lies at the alias frequencies only: checkerboard and stripes."""
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return {"(-1)^(i+j)": (-1.0) ** (i + j), "(-1)^i": (-1.0) ** i}


def pattern_scores(real_NHWC: np.ndarray, amplitudes: Sequence[float] = AMPLITUDES) -> dict[str, list[float]]:
  """Checkerboard score of ``real + a * pattern`` (not clipped) against ``real`` itself, per pattern and amplitude.

  1 at ``a = 0``; the pattern adds ``a^2`` times its power at the alias points and nothing elsewhere, so a
  score that measures stride-2 artifacts rises with ``a``.
  """
  _, h, w, _ = real_NHWC.shape
  return {
    name: [quality.checkerboard_score(real_NHWC + a * pattern[None, :, :, None], real_NHWC) for a in amplitudes]
    for name, pattern in period_two_patterns(h, w).items()
  }


def equal_weights(generator_params: Any, transpose: bool) -> Any:
  """The generator's parameters with every kernel of its up-sampling blocks and output layer set to one value,
  ``1 / (kernel height * width * input channels)``: what is left is how the kernel overlaps itself.

  The latent projection (``"project"``) keeps its random weights, so the images still vary. A `models.Deconv`
  kernel is its forward conv's ``[kh, kw, out, in]``: it sums over its last axis (``transpose=True``), a
  `models.Conv` kernel over its third.
  """

  def equal(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
    if path[0].key == "project" or path[-1].key != "kernel":
      return x
    kh, kw = x.shape[:2]
    return jnp.full_like(x, 1.0 / (kh * kw * x.shape[3 if transpose else 2]))

  return jax.tree_util.tree_map_with_path(equal, generator_params)


def init_checkerboard(
  config: ml_collections.ConfigDict,
  names: Sequence[str],
  seeds: Sequence[int],
  real_NHWC: np.ndarray,
  num_images: int = NUM_CHECKED,
) -> dict[str, dict[str, dict[str, Any]]]:
  """Checkerboard score against ``real_NHWC`` of each variant's generator at initialization, over ``seeds``.

  ``{variant: {"random": summary, "equal": summary}}`` (`summarize`): its initial random weights, and
  `equal_weights`, with which kernels 3 and 5 (uneven overlap with stride 2) must score far above kernel 4
  and resize-conv. ``num_images`` images per generator.
  """
  task = tasks.get("gan")
  info = data.get_info(config.dataset, config.dataset.train_split)
  found: dict[str, dict[str, list[float]]] = {}
  for name in names:
    found[name] = {"random": [], "equal": []}
    for seed in seeds:
      cfg = variants.variant_config(config, name, seed)
      state = variants.init_state(cfg, task, info)
      equal = equal_weights(state.params["generator"], cfg.generator.upsample == "transpose")
      for kind, s in (("random", state), ("equal", state.replace(params={**state.params, "generator": equal}))):
        found[name][kind].append(quality.checkerboard_score(task.generate_many(s, num_images), real_NHWC))
  return {name: {kind: stats.summarize(v) for kind, v in kinds.items()} for name, kinds in found.items()}
