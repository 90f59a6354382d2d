"""The deconvnet of a trained classifier run (Zeiler & Fergus 2014): where each unit looks, what excites it most,
its projection back to pixels, and the figures of both; with saliency and guided backprop beside it.

`visualize_workdir` writes into a run directory:

* ``deconvnet_act{i}.png``, one per conv layer (Zeiler & Fergus 2014, fig. 2): for each
  chosen channel, the ``top_k`` images of the eval split that excite it most (the unit
  at its strongest position boxed in red: its receptive field), their deconvnet
  projections of that one unit, and the input patches under the receptive field;
* ``attribution_methods.png``: for ``num_images`` eval images spread evenly over the
  split, saliency, deconvnet and guided backprop of the predicted class's logit side by side.

Display normalization, the same in every figure: images as they are (``[0, 1]``);
each projection or attribution map on its own symmetric scale, mid-gray = 0,
white = ``+max|v|``, black = ``-max|v|`` of that map.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deconv_jax import attribution, data, figures, models, ops
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.tasks import classifier

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
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """All images of ``source`` ``[N, H, W, C]``, their labels ``[N]``, and per layer each image's strongest
  activation per channel ``[N, C]``."""

  @jax.jit
  def strongest(images):
    acts = attribution.activations(model, variables, images)
    return {name: acts[name].max(axis=(1, 2)) for name in layers}

  images, labels, maxima = [], [], {name: [] for name in layers}
  for batch in data.eval_batches(source, global_batch_size=batch_size):
    real = np.asarray(batch["mask"]) > 0
    values = jax.device_get(strongest(batch["image"]))
    images.append(np.asarray(batch["image"])[real])
    labels.append(np.asarray(batch["label"])[real])
    for name in layers:
      maxima[name].append(values[name][real])
  return np.concatenate(images), np.concatenate(labels), {name: np.concatenate(v) for name, v in maxima.items()}


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
  """A jitted ``(variables, images [N, H, W, C], channels [N]) -> (projections [N, H, W, C], positions [N, 2])``.

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
def _every_method(model: models.CNN, variables: Any, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  predicted = jnp.argmax(model.apply(variables, images), axis=-1)
  target = attribution.logit(predicted)
  return predicted, {m: attribution.attribute(model, variables, images, target, m) for m in attribution.METHODS}


# ---------------------------------------------------------------- the figures


SIGNED_SCALE = "Maps: mid-gray = 0, white = +max|v|, black = -max|v|, each map on its own scale."
GAP = 2  # pixels of white between the images tiled in one panel


def _crop(image_HWC: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
  """The ``size x size`` window at ``(top, left)``; outside the image it is ``fill``."""
  h, w, c = image_HWC.shape
  out = np.full((size, size, c), fill, np.float32)
  r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
  out[r0 - top : r1 - top, c0 - left : c1 - left] = image_HWC[r0:r1, c0:c1]
  return out


def _tiled(ax: Axes, images_NHWC: np.ndarray, cols: int, zoom: int = 1) -> None:
  """``images`` in ``[0, 1]``, each pixel repeated ``zoom`` times, tiled in one panel ``cols`` a row."""
  zoomed = np.repeat(np.repeat(images_NHWC, zoom, axis=1), zoom, axis=2)
  figures.show(ax, figures.image_grid(zoomed, cols, gap=GAP) / 255)


def layer_figure(
  images_NHWC: np.ndarray,
  projections_NHWC: np.ndarray,
  positions_B2: np.ndarray,
  channels: Sequence[int],
  field: tuple[int, int, int],
  layer: str,
  top_k: int,
) -> Figure:
  """Per channel, three panels of ``top_k`` tiles: its top images (the strongest unit's receptive field boxed in
  red), the deconvnet projections of that unit, and the input under the field; two channels a row."""
  size, jump, start = field
  h, w = images_NHWC.shape[1:3]
  cols = int(np.ceil(np.sqrt(top_k)))
  zoom = -(-h // size)  # crops of a small field tiled at about the size of whole images
  per_row = min(2, len(channels))
  fig, axes = figures.panels(
    f"Deconvnet (Zeiler & Fergus): what excites {layer} ({len(channels)} channels, receptive field {size}x{size})",
    -(-len(channels) // per_row),
    3 * per_row,
    footnote="Each channel: the images that excite it most, with its strongest unit's receptive field boxed in red; "
    "that one unit projected back to pixels;\nand the input under the box. " + SIGNED_SCALE,
    extra=(0.9, 1.0),
  )
  captions = (f"top {top_k} images,\nunit boxed", "deconvnet\nof that unit", f"input under it\n({size}x{size})")
  for n, c in enumerate(channels):
    row, group = divmod(n, per_row)
    shown, projected, under = axes[row, 3 * group : 3 * group + 3]
    b = slice(n * top_k, (n + 1) * top_k)
    corners = [tuple(start + jump * int(p) for p in position) for position in positions_B2[b]]
    _tiled(shown, images_NHWC[b], cols)
    for i, (top, left) in enumerate(corners):
      r0, c0 = (i // cols) * (h + GAP), (i % cols) * (w + GAP)  # the tile's corner
      bottom, right = min(top + size, h), min(left + size, w)
      top, left = max(top, 0), max(left, 0)
      figures.frame(shown, r0 + top, c0 + left, bottom - top, right - left)
    crops = [_crop(p, t, left, size, 0.0) for p, (t, left) in zip(projections_NHWC[b], corners)]
    _tiled(projected, np.stack([figures.signed(crop) for crop in crops]), cols, zoom)
    _tiled(under, np.stack([_crop(x, t, left, size, 1.0) for x, (t, left) in zip(images_NHWC[b], corners)]), cols, zoom)
    shown.set_ylabel(f"channel {c}", fontsize="large")
    if row == 0:
      for ax, caption in zip((shown, projected, under), captions):
        ax.set_title(caption, fontsize="medium")
  for ax in axes.flat[len(channels) * 3 :]:
    ax.set_axis_off()
  figures.signed_colorbar(fig, axes, "each projection\n(on its own scale)")
  return fig


def methods_figure(
  images_NHWC: np.ndarray, labels_N: np.ndarray, predicted_N: np.ndarray, maps: dict[str, np.ndarray]
) -> Figure:
  """A table: one row per image (labelled with its true and predicted class), then each method's map of its
  predicted logit (`attribution.METHODS`, in order, whatever they are), each map on its own symmetric gray scale."""
  names = [m.replace("_", " ") for m in attribution.METHODS]
  fig, axes = figures.panels(
    f"{', '.join(names[:-1]).capitalize()} and {names[-1]} of the predicted class's logit",
    len(images_NHWC),
    1 + len(attribution.METHODS),
    panel=1.4,
    footnote="\n".join(f"{n}: {attribution.DESCRIPTIONS[m]}" for n, m in zip(names, attribution.METHODS))
    + ".\n"
    + SIGNED_SCALE,
    extra=(1.8, 1.1),
  )
  for b, row in enumerate(axes):
    figures.show(row[0], images_NHWC[b])
    row[0].set_ylabel(f"true {labels_N[b]}\npredicted {predicted_N[b]}", rotation=0, ha="right", va="center")
    for ax, m in zip(row[1:], attribution.METHODS):
      figures.show(ax, figures.signed(maps[m][b]))
  for ax, title in zip(axes[0], ["image", *(m.replace("_", " ") for m in attribution.METHODS)]):
    ax.set_title(title, fontsize="medium")
  figures.signed_colorbar(fig, axes[:, 1:], "each map\n(on its own scale)")
  return fig


# ---------------------------------------------------------------- a run's figures


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
  run = workdir_lib.restore(config, workdir, classifier, command="visualize")
  run_dir = workdir_lib.RunDir(workdir)
  model = classifier.build_model(config, run.info.num_classes)
  variables = {"params": run.state.params}
  layers = [f"act{i}" for i in range(1, len(model.features) + 1)]
  for c in channels:
    if not 0 <= c < min(model.features):
      raise config_lib.ConfigError(f"--channels: channel {c} does not exist; the conv layers have {model.features}")

  source = data.get_source(config.dataset, config.dataset.eval_split)
  images_NHWC, labels_N, maxima = top_activations(model, variables, source, layers, batch_size=config.eval_batch_size)
  if len(images_NHWC) < max(top_k, num_images):
    raise config_lib.ConfigError(f"the eval split has {len(images_NHWC)} images; --top_k={top_k} needs more")
  paths = []
  for i, layer in enumerate(layers, start=1):
    shown, order = choose(maxima[layer], top_k, num_channels, channels)
    selected = images_NHWC[order.reshape(-1)]
    projections, positions = jax.device_get(
      projector(model, layer)(variables, selected, np.repeat(np.asarray(shown, np.int32), top_k))
    )
    page = layer_figure(selected, projections, positions, shown, receptive_field(model, i), layer, top_k)
    paths.append(run_dir.figure(f"deconvnet_{layer}"))
    figures.save(page, paths[-1])

  panel = np.linspace(0, len(images_NHWC) - 1, num_images).round().astype(int)  # spread over the split
  predicted, maps = jax.device_get(_every_method(model, variables, images_NHWC[panel]))
  paths.append(run_dir.figure("attribution_methods"))
  figures.save(methods_figure(images_NHWC[panel], labels_N[panel], predicted, maps), paths[-1])
  return paths
