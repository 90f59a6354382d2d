"""The variants of the up-sampling study: the generator settings each one changes, and which pairs it compares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from deconv_jax import data

# name -> generator overrides. Kernel 4 overlaps evenly with stride 2; 3 and 5 do not (Odena et al. 2016).
VARIANTS: dict[str, dict[str, Any]] = {
  "transpose_k4": {"upsample": "transpose", "kernel_size": 4},
  "transpose_k3": {"upsample": "transpose", "kernel_size": 3},
  "transpose_k5": {"upsample": "transpose", "kernel_size": 5},
  "resize_conv_nearest_k3": {"upsample": "resize_conv", "resize_method": "nearest", "kernel_size": 3},
  "resize_conv_bilinear_k3": {"upsample": "resize_conv", "resize_method": "bilinear", "kernel_size": 3},
  "subpixel_k3": {"upsample": "subpixel", "kernel_size": 3},
}
BASELINE = "transpose_k4"  # the variant every other one is compared with


def comparisons(variants: Sequence[str]) -> list[tuple[str, str]]:
  """The pairs ``(a, b)`` the study compares, of those in ``variants``: each variant against `BASELINE` (is
  even overlap what matters?), and nearest resize-conv against transposed kernel 3 (at the same kernel size, does
  resizing first remove the checkerboard?)."""
  pairs = [(v, BASELINE) for v in VARIANTS if v != BASELINE] + [("resize_conv_nearest_k3", "transpose_k3")]
  return [(a, b) for a, b in pairs if a in variants and b in variants]


def variant_config(config: ml_collections.ConfigDict, name: str, seed: int | None = None) -> ml_collections.ConfigDict:
  """``config`` with variant ``name``'s generator settings, and ``seed`` (default: the config's)."""
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in VARIANTS[name].items():
    c.generator[key] = value
  if seed is not None:
    c.seed = seed
  return c


def init_state(config: ml_collections.ConfigDict, task: Any, info: data.DatasetInfo) -> Any:
  """The train state a run of ``config`` starts from (`train` splits the same key)."""
  return task.create_state(config, jax.random.split(jax.random.key(config.seed))[0], info, 1)
