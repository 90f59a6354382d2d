"""What the library's figures share, drawn with matplotlib.

Every figure a command writes (the deconvnet figures of `visualize`, the up-sampling study's figures) is a
`matplotlib.figure.Figure` returned by a function, saved with `save`; a run's sample grids are written with
`save_image`. Matplotlib, because the figures are charts as much as pictures: titles, axis labels, colorbars,
colormaps and log scales come with it instead of from code of our own; and because the notebooks draw with it
too, so a notebook displays the very Figure a command saves, and a figure in the docs and in a notebook come
from one function.

Figures are made as ``Figure`` objects directly, never through ``matplotlib.pyplot``: the library keeps no global
figure state, never picks or switches a backend (a notebook keeps its inline one) and never calls ``show``. A
returned Figure displays in a notebook as a cell's value or with ``display(fig)``; `save` renders it with Agg.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colorbar import Colorbar
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from deconv_jax import storage

DPI = 100  # a saved PNG's pixels per inch: 9-point text, the smallest drawn, is 12.5 pixels tall
SMALL = 9  # points: footnotes and tick labels
RED = "red"  # frames: receptive fields, alias frequencies, crops


class ShownFigure(Figure):
  """A Figure that a notebook displays as a PNG even where pyplot, which sets up inline display, was never
  imported; where it was, its inline display comes first, as for any Figure."""

  def _repr_png_(self) -> bytes:
    buffer = io.BytesIO()
    save(self, buffer)
    return buffer.getvalue()


def image_grid(images_NHWC: np.ndarray, cols: int = 8, gap: int = 2) -> np.ndarray:
  """Images ``[N, H, W, C]`` in ``[0, 1]`` -> one uint8 grid ``[rows * (H + gap) - gap, ..., 3]`` on white."""
  images = np.clip(np.asarray(images_NHWC, np.float32), 0, 1)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  n, h, w, _ = images.shape
  cols = min(cols, n)
  rows = -(-n // cols)
  grid = np.ones((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = image[..., :3]
  return (grid * 255).round().astype(np.uint8)


def save_image(image_HW3: np.ndarray, path: str, zoom: int = 2) -> None:
  """A uint8 RGB image (an `image_grid`) written as a PNG as it is, each pixel ``zoom`` x ``zoom``: a picture
  with nothing around it, every pixel exactly where it is. ``path``: local or ``gs://``, written whole."""
  png = io.BytesIO()
  matplotlib.image.imsave(png, np.repeat(np.repeat(image_HW3, zoom, axis=0), zoom, axis=1), format="png")
  storage.write_bytes(path, png.getvalue())


def panels(
  title: str, rows: int, cols: int, *, panel: float = 1.6, footnote: str = "", extra: tuple[float, float] = (0, 0)
) -> tuple[Figure, np.ndarray]:
  """A figure of ``rows x cols`` image panels ``axes[r, c]`` (no ticks; ``panel`` inches square) under ``title``
  and over ``footnote``; ``extra`` inches ``(wide, high)`` for row labels, colorbars and text.

  Matplotlib's compressed layout (its constrained layout for grids of fixed-aspect images) places the panels,
  their labels and colorbars; the footnote is the figure's ``supxlabel``, the one text under the panels that it
  makes room for.
  """
  fig = ShownFigure(figsize=(cols * panel + extra[0], rows * panel + extra[1]), dpi=DPI, layout="compressed")
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title, x=0.01, ha="left", fontsize="large")
  if footnote:
    fig.supxlabel(footnote, x=0.01, ha="left", fontsize=SMALL, linespacing=1.4)
  return fig, axes


def show(ax: Axes, image_HWC: np.ndarray, **kwargs):
  """An image ``[H, W, 1 or 3]`` in ``[0, 1]`` (clipped) as it is: one channel in gray, black = 0, white = 1."""
  image = np.clip(np.asarray(image_HWC, np.float32), 0, 1)
  if image.shape[-1] == 1:
    return ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest", **kwargs)
  return ax.imshow(image[..., :3], interpolation="nearest", **kwargs)


def signed(map_HWC: np.ndarray) -> np.ndarray:
  """A signed map in ``[0, 1]`` for `show`: mid-gray = 0, white/black = +/- its own max ``|v|``."""
  scale = float(np.abs(map_HWC).max())
  return 0.5 + 0.5 * np.asarray(map_HWC, np.float32) / (scale if scale > 0 else 1.0)


def signed_colorbar(fig: Figure, axes: Sequence[Axes] | np.ndarray, label: str) -> Colorbar:
  """The gray scale of maps shown with `signed`, beside ``axes``: -max|v| (black), 0, +max|v| (white)."""
  bar = fig.colorbar(
    ScalarMappable(Normalize(-1, 1), matplotlib.colormaps["gray"]), ax=axes, ticks=[-1, 0, 1], shrink=0.6
  )
  bar.ax.set_yticklabels(["-max|v|", "0", "+max|v|"], fontsize=SMALL)
  bar.set_label(label, fontsize=SMALL)
  return bar


def frame(ax: Axes, top: float, left: float, height: float, width: float, margin: float = 0.0) -> Rectangle:
  """A red frame on the ``height x width`` pixels from pixel ``(top, left)`` of an image in ``ax``, ``margin``
  pixels outside them; what falls outside the panel is clipped."""
  corner = (left - 0.5 - margin, top - 0.5 - margin)
  box = Rectangle(corner, width + 2 * margin, height + 2 * margin, fill=False, edgecolor=RED, linewidth=1.5)
  return ax.add_patch(box)


def save(fig: Figure, path: str | io.BytesIO) -> None:
  """``fig`` as a PNG at `DPI` pixels per inch, rendered with Agg whatever backend is in use, cropped to what is
  drawn (as a notebook shows it), so that a title longer than its panels are wide is not cut off. ``path``: a
  buffer, or a file, local or ``gs://``, written whole (`storage.write_bytes`).

  Nothing to close: the figure was never registered with pyplot, so it is freed once its caller drops it.
  """
  png = path if isinstance(path, io.BytesIO) else io.BytesIO()
  fig.savefig(png, format="png", dpi=DPI, backend="agg", facecolor="white", bbox_inches="tight", pad_inches=0.1)
  if png is not path:
    storage.write_bytes(path, png.getvalue())
