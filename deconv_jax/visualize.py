r"""Deconvnet figures of a trained classifier: ``python -m deconv_jax.visualize --workdir DIR [--config.KEY=VALUE]``.

Loads the run's saved config and latest checkpoint and writes into ``DIR``:

* ``deconvnet_act{i}.png``, one per conv layer (Zeiler & Fergus 2014, fig. 2): for each
  chosen channel, the ``top_k`` images of the eval split that excite it most (the unit
  at its strongest position boxed in red: its receptive field), their deconvnet
  projections of that one unit, and the input patches under the receptive field;
* ``attribution_methods.png``: for ``num_images`` eval images spread evenly over the
  split, saliency, deconvnet and guided backprop of the predicted class's logit side by side.

Display normalization, the same in every figure: images as they are (``[0, 1]``);
each projection or attribution map on its own symmetric scale, mid-gray = 0,
white = ``+max|v|``, black = ``-max|v|`` of that map. Overrides of ``config.dataset.*``
pick another split to search, e.g. the real MNIST test set::

  python -m deconv_jax.visualize --workdir workdirs/quickstart \
    --config.dataset.source=idx --config.dataset.data_dir=../shared/data/mnist --config.dataset.eval_split=test
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from deconv_jax import attribution, cli, data, evaluate, models, ops
from deconv_jax import config as config_lib
from deconv_jax.metric_writers import image_grid

RED = np.array([1.0, 0.0, 0.0])
GAP = 4  # pixels between cells
LABEL_H = 14  # pixels of text above a block


# ---------------------------------------------------------------- receptive fields


def receptive_field(model: models.CNN, layer: int) -> tuple[int, int, int]:
  """``(size, jump, start)`` of conv layer ``layer`` (1-based) of ``model``, in input pixels.

  Unit ``(i, j)`` of ``act{layer}`` sees input rows ``start + i * jump`` to
  ``start + i * jump + size - 1`` (and the same for columns); ``start < 0`` means padding.
  """
  k = ops.as_pair(model.kernel_size, "kernel_size")[0]
  size, jump, start = 1, 1, 0
  for i in range(1, layer + 1):
    start -= ((k - 1) // 2 if model.padding == "SAME" else 0) * jump
    size += (k - 1) * jump
    if i < layer and model.pool > 1:
      size += (model.pool - 1) * jump
      jump *= model.pool
  return size, jump, start


# ---------------------------------------------------------------- the computations (batched, jitted)


def top_activations(
  model: models.CNN, variables: Any, source: Any, layers: Sequence[str], *, batch_size: int = 500
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """All images of ``source`` ``[N, H, W, C]``; per layer, each image's strongest activation per channel ``[N, C]``."""

  @jax.jit
  def strongest(images):
    acts = attribution.activations(model, variables, images)
    return {name: acts[name].max(axis=(1, 2)) for name in layers}

  images, maxima = [], {name: [] for name in layers}
  for batch in data.eval_batches(source, global_batch_size=batch_size):
    real = np.asarray(batch["mask"]) > 0
    values = jax.device_get(strongest(batch["image"]))
    images.append(np.asarray(batch["image"])[real])
    for name in layers:
      maxima[name].append(values[name][real])
  return np.concatenate(images), {name: np.concatenate(v) for name, v in maxima.items()}


def choose(
  maxima_NC: np.ndarray, top_k: int, num_channels: int, channels: Sequence[int]
) -> tuple[list[int], np.ndarray]:
  """The channels to show and, for each, its ``top_k`` images (indices ``[len(channels), top_k]``, strongest first).

  Without explicit ``channels``: the ``num_channels`` channels whose ``top_k``-th strongest
  image excites them most (so every shown image activates its channel), in index order.
  """
  order_CN = np.argsort(-maxima_NC.T, axis=1, kind="stable")[:, :top_k]
  if not channels:
    kth = np.take_along_axis(maxima_NC.T, order_CN[:, -1:], axis=1)[:, 0]
    channels = sorted(np.argsort(-kth, kind="stable")[:num_channels].tolist())
  return list(channels), order_CN[list(channels)]


def projector(model: models.CNN, layer: str):
  """A jitted ``(variables, images [B, H, W, C], channels [B]) -> (projections [B, H, W, C], positions [B, 2])``.

  Each example's projection is the deconvnet of the single strongest unit of its own
  channel, seeded with that unit's activation (Zeiler & Fergus): one compiled call for all.
  """

  @jax.jit
  def project(variables, images, channels):
    target = attribution.strongest(layer, channels)
    projections = attribution.attribute(model, variables, images, target, "deconvnet", seed="values")
    maps = attribution.channel(layer, channels)(attribution.activations(model, variables, images))
    return projections, attribution.argmax_position(maps)

  return project


@functools.partial(jax.jit, static_argnums=0)
def _three_methods(model: models.CNN, variables: Any, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  predicted = jnp.argmax(model.apply(variables, images), axis=-1)
  target = attribution.logit(predicted)
  return predicted, {m: attribution.attribute(model, variables, images, target, m) for m in attribution.METHODS}


# ---------------------------------------------------------------- drawing


def _rgb(image_HWC: np.ndarray) -> np.ndarray:
  image = np.clip(np.asarray(image_HWC, np.float32), 0, 1)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def signed(map_HWC: np.ndarray) -> np.ndarray:
  """A signed map for display: mid-gray = 0, white/black = +/- its own max ``|v|``."""
  scale = float(np.abs(map_HWC).max())
  return _rgb(0.5 + 0.5 * np.asarray(map_HWC) / (scale if scale > 0 else 1.0))


def _crop(image_HWC: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
  """The ``size x size`` window at ``(top, left)``; outside the image it is ``fill``."""
  h, w, c = image_HWC.shape
  out = np.full((size, size, c), fill, np.float32)
  r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
  out[r0 - top : r1 - top, c0 - left : c1 - left] = image_HWC[r0:r1, c0:c1]
  return out


def _zoom(image: np.ndarray, cell: int) -> np.ndarray:
  return np.asarray(Image.fromarray(_u8(image)).resize((cell, cell), Image.NEAREST), np.float32) / 255


def _u8(image: np.ndarray) -> np.ndarray:
  return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def _grid(cells: Sequence[np.ndarray], cols: int) -> np.ndarray:
  """Equal RGB cells in ``[0, 1]`` in a grid of ``cols`` columns on white (`metric_writers.image_grid`), as floats."""
  return image_grid(np.stack(cells), cols, gap=GAP).astype(np.float32) / 255


def _box(image: np.ndarray, top: int, left: int, size: int, zoom: int) -> np.ndarray:
  out = image.copy()
  h, w = out.shape[:2]
  r0, c0 = max(top * zoom, 0), max(left * zoom, 0)
  r1, c1 = min((top + size) * zoom, h) - 1, min((left + size) * zoom, w) - 1
  out[r0 : r1 + 1, [c0, c1]] = RED
  out[[r0, r1], c0 : c1 + 1] = RED
  return out


def _labelled(blocks: Sequence[tuple[str, np.ndarray]], cols: int) -> Image.Image:
  """Blocks (each an RGB array with a one-line label above it) in a grid of ``cols`` columns."""
  bh = max(b.shape[0] for _, b in blocks) + LABEL_H
  bw = max(b.shape[1] for _, b in blocks)
  rows = -(-len(blocks) // cols)
  canvas = Image.new("RGB", (cols * bw + (cols + 1) * 3 * GAP, rows * bh + (rows + 1) * 2 * GAP), "white")
  draw = ImageDraw.Draw(canvas)
  for n, (label, block) in enumerate(blocks):
    r, c = divmod(n, cols)
    x, y = 3 * GAP + c * (bw + 3 * GAP), 2 * GAP + r * (bh + 2 * GAP)
    draw.text((x, y), label, fill="black")
    canvas.paste(Image.fromarray(_u8(block)), (x, y + LABEL_H))
  return canvas


def layer_figure(
  images_BHWC: np.ndarray,
  projections_BHWC: np.ndarray,
  positions_B2: np.ndarray,
  channels: Sequence[int],
  field: tuple[int, int, int],
  layer: str,
  top_k: int,
) -> Image.Image:
  """Per channel: [top_k images, unit boxed | their projections | their input patches], each a square grid."""
  size, jump, start = field
  h = images_BHWC.shape[1]
  zoom = max(1, 64 // h)
  cell = h * zoom
  cols = int(np.ceil(np.sqrt(top_k)))
  blocks = []
  for n, c in enumerate(channels):
    shown, projected, patches = [], [], []
    for b in range(n * top_k, (n + 1) * top_k):
      top, left = (start + jump * int(p) for p in positions_B2[b])
      shown.append(_box(_zoom(_rgb(images_BHWC[b]), cell), top, left, size, zoom))
      projected.append(_zoom(signed(_crop(projections_BHWC[b], top, left, size, 0.0)), cell))
      patches.append(_zoom(_rgb(_crop(images_BHWC[b], top, left, size, 1.0)), cell))
    grids = [_grid(cells, cols) for cells in (shown, projected, patches)]
    spacer = np.ones((grids[0].shape[0], 3 * GAP, 3), np.float32)
    row = np.concatenate([grids[0], spacer, grids[1], spacer, grids[2]], axis=1)
    blocks.append((f"{layer} channel {c}: top {top_k} | deconvnet | {size}x{size} patches", row))
  return _labelled(blocks, cols=2)


def methods_figure(images_BHWC: np.ndarray, predicted_B: np.ndarray, maps: dict[str, np.ndarray]) -> Image.Image:
  """One row per image: the image, then each method's map of its predicted class's logit."""
  h = images_BHWC.shape[1]
  cell = h * max(1, 96 // h)
  blocks = []
  for b in range(len(images_BHWC)):
    cells = [_zoom(_rgb(images_BHWC[b]), cell)] + [_zoom(signed(maps[m][b]), cell) for m in attribution.METHODS]
    blocks.append((f"predicted {predicted_B[b]}: image | " + " | ".join(attribution.METHODS), _grid(cells, 4)))
  return _labelled(blocks, cols=2)


# ---------------------------------------------------------------- the command


def visualize_workdir(
  config: Any,
  workdir: str,
  *,
  channels: Sequence[int] = (),
  num_channels: int = 8,
  top_k: int = 9,
  num_images: int = 6,
) -> list[str]:
  """Writes the figures of the classifier run in ``workdir`` into it; returns their paths."""
  if config.task != "classifier":
    raise config_lib.ConfigError(f"visualize needs a classifier run; config.task is {config.task!r}")
  _, state, _, info = evaluate.restore_run(config, workdir, command="visualize")
  model = models.cnn_from_config(config.model, info.num_classes)
  variables = {"params": state.params}
  layers = [f"act{i}" for i in range(1, len(model.features) + 1)]
  for c in channels:
    if not 0 <= c < min(model.features):
      raise config_lib.ConfigError(f"--channels: channel {c} does not exist; the conv layers have {model.features}")

  source = data.get_source(config.dataset, config.dataset.eval_split)
  images_NHWC, maxima = top_activations(model, variables, source, layers, batch_size=config.eval_batch_size)
  if len(images_NHWC) < max(top_k, num_images):
    raise config_lib.ConfigError(f"the eval split has {len(images_NHWC)} images; --top_k={top_k} needs more")
  paths = []
  for i, layer in enumerate(layers, start=1):
    shown, order = choose(maxima[layer], top_k, num_channels, channels)
    selected = images_NHWC[order.reshape(-1)]
    projections, positions = jax.device_get(
      projector(model, layer)(variables, selected, np.repeat(np.asarray(shown, np.int32), top_k))
    )
    figure = layer_figure(selected, projections, positions, shown, receptive_field(model, i), layer, top_k)
    paths.append(os.path.join(workdir, f"deconvnet_{layer}.png"))
    figure.save(paths[-1])

  panel = images_NHWC[np.linspace(0, len(images_NHWC) - 1, num_images).round().astype(int)]  # spread over the split
  predicted, maps = jax.device_get(_three_methods(model, variables, panel))
  paths.append(os.path.join(workdir, "attribution_methods.png"))
  methods_figure(panel, predicted, maps).save(paths[-1])
  return paths


def define_flags(argv: list[str]) -> None:
  cli.define_workdir_flags(argv)
  flags.DEFINE_list("channels", [], "Channels to show in every layer (default: the num_channels most active).")
  flags.DEFINE_integer("num_channels", 8, "Channels per layer when --channels is not given.", lower_bound=1)
  flags.DEFINE_integer("top_k", 9, "Images per channel: the ones that excite it most.", lower_bound=1)
  flags.DEFINE_integer("num_images", 6, "Images in the saliency / deconvnet / guided backprop panel.", lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  try:
    channels = [int(c) for c in FLAGS.channels]
  except ValueError:
    cli.die(f"--channels={','.join(FLAGS.channels)}: expected comma-separated channel numbers")
  start = time.time()
  paths = visualize_workdir(
    FLAGS.config,
    FLAGS.workdir,
    channels=channels,
    num_channels=FLAGS.num_channels,
    top_k=FLAGS.top_k,
    num_images=FLAGS.num_images,
  )
  for path in paths:
    print(path)
  print(f"wrote {len(paths)} figures in {time.time() - start:.1f} s", flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.visualize``, ``deconv-visualize``)."""
  cli.run(main, lambda: define_flags(sys.argv))


if __name__ == "__main__":
  run()
