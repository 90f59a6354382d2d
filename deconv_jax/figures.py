"""The one drawing toolkit: RGB arrays in ``[0, 1]`` composed into titled, captioned PNG figures with PIL.

Every figure the commands write (the deconvnet figures of `visualize`, the sample grids of a run, the up-sampling
study's figures) is drawn here, from numpy arrays: text rendered with PIL's scalable default font, blocks
stacked on white, a title and a footnote. PIL, not matplotlib, because the library's commands then need no
plotting stack (matplotlib is the notebooks' extra), and a figure is pixels exactly where it shows pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RED = np.array([1.0, 0.0, 0.0])
GAP = 4  # pixels between cells
FONT_SIZE = 15  # pixels; PIL's scalable default font


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


def save_png(grid: np.ndarray, path: str, zoom: int = 2) -> None:
  """A uint8 RGB image (an `image_grid`) written as a PNG, each pixel ``zoom`` x ``zoom``."""
  Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.NEAREST).save(path)


def rgb(image_HWC: np.ndarray) -> np.ndarray:
  """``[H, W, 1 or 3]`` in ``[0, 1]`` (clipped) -> RGB floats ``[H, W, 3]``."""
  image = np.clip(np.asarray(image_HWC, np.float32), 0, 1)
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def signed(map_HWC: np.ndarray) -> np.ndarray:
  """A signed map for display: mid-gray = 0, white/black = +/- its own max ``|v|``."""
  scale = float(np.abs(map_HWC).max())
  return rgb(0.5 + 0.5 * np.asarray(map_HWC) / (scale if scale > 0 else 1.0))


def crop(image_HWC: np.ndarray, top: int, left: int, size: int, fill: float) -> np.ndarray:
  """The ``size x size`` window at ``(top, left)``; outside the image it is ``fill``."""
  h, w, c = image_HWC.shape
  out = np.full((size, size, c), fill, np.float32)
  r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + size, h), min(left + size, w)
  out[r0 - top : r1 - top, c0 - left : c1 - left] = image_HWC[r0:r1, c0:c1]
  return out


def zoom_to(image: np.ndarray, cell: int) -> np.ndarray:
  """An RGB image resized to ``cell`` x ``cell`` pixels, nearest neighbour."""
  return np.asarray(Image.fromarray(u8(image)).resize((cell, cell), Image.NEAREST), np.float32) / 255


def u8(image: np.ndarray) -> np.ndarray:
  """Floats in ``[0, 1]`` -> uint8."""
  return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def grid(cells: Sequence[np.ndarray], cols: int) -> np.ndarray:
  """Equal RGB cells in ``[0, 1]`` in a grid of ``cols`` columns on white (`image_grid`), as floats."""
  return image_grid(np.stack(cells), cols, gap=GAP).astype(np.float32) / 255


def box(image: np.ndarray, top: int, left: int, size: int, zoom: int) -> np.ndarray:
  """A one-pixel red box on the ``size``-pixel square at ``(top, left)`` of an image since zoomed ``zoom`` times."""
  out = image.copy()
  h, w = out.shape[:2]
  r0, c0 = max(top * zoom, 0), max(left * zoom, 0)
  r1, c1 = min((top + size) * zoom, h) - 1, min((left + size) * zoom, w) - 1
  out[r0 : r1 + 1, [c0, c1]] = RED
  out[[r0, r1], c0 : c1 + 1] = RED
  return out


def text(lines: str, width: int = 0, *, size: int = FONT_SIZE, center: bool = False) -> np.ndarray:
  """``lines`` (``\n``-separated) in black on white, as an RGB array ``[h, max(width, text width), 3]``."""
  font = ImageFont.load_default(size=size)
  rows = lines.split("\n")
  line_h = size + size // 3
  text_w = max(int(np.ceil(font.getlength(row))) for row in rows)
  canvas = Image.new("RGB", (max(width, text_w), line_h * len(rows) + size // 3), "white")
  draw = ImageDraw.Draw(canvas)
  for i, row in enumerate(rows):
    x = (canvas.width - font.getlength(row)) / 2 if center else 0
    draw.text((x, i * line_h), row, fill="black", font=font)
  return np.asarray(canvas, np.float32) / 255


def stack(arrays: Sequence[np.ndarray], axis: int, gap: int = 0, *, center: bool = False) -> np.ndarray:
  """RGB arrays on white, one below the other (``axis=0``) or side by side (``axis=1``), ``gap`` pixels apart."""
  other = 1 - axis
  size = max(a.shape[other] for a in arrays)
  parts = []
  for i, a in enumerate(arrays):
    pad = size - a.shape[other]
    before = pad // 2 if center else 0
    widths = [(0, 0)] * 3
    widths[other] = (before, pad - before)
    parts.append(np.pad(a, widths, constant_values=1.0))
    if gap and i < len(arrays) - 1:
      shape = list(parts[-1].shape)
      shape[axis] = gap
      parts.append(np.ones(shape, np.float32))
  return np.concatenate(parts, axis=axis)


def captioned(caption: str, block: np.ndarray) -> np.ndarray:
  return stack([text(caption, block.shape[1], center=True), block], axis=0, gap=2)


def figure(title: str, body: np.ndarray, footnote: str) -> Image.Image:
  """``body`` under a title and over a footnote, with a white margin."""
  page = stack([text(title, size=FONT_SIZE + 3), body, text(footnote)], axis=0, gap=3 * GAP)
  return Image.fromarray(u8(np.pad(page, ((3 * GAP, 3 * GAP), (3 * GAP, 3 * GAP), (0, 0)), constant_values=1.0)))


VIRIDIS = np.array(
  [[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
   [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]], np.float32
) / 255  # fmt: skip


def viridis(values: np.ndarray) -> np.ndarray:
  """Values in ``[0, 1]`` -> RGB ``[..., 3]`` (matplotlib's viridis, linear between 10 of its colours)."""
  x = np.clip(np.nan_to_num(values), 0, 1) * (len(VIRIDIS) - 1)
  low = np.minimum(np.floor(x).astype(int), len(VIRIDIS) - 2)
  return VIRIDIS[low] + (x - low)[..., None] * (VIRIDIS[low + 1] - VIRIDIS[low])


def frame(image: np.ndarray, top: int, left: int, size: int, margin: int = 0, width: int = 2) -> np.ndarray:
  """A red square frame ``width`` pixels wide around the ``size``-pixel square at ``(top, left)``, ``margin``
  pixels outside it (0: on its border), clipped to ``image`` and drawn into a copy of it."""
  r, c = np.ogrid[: image.shape[0], : image.shape[1]]
  lo_r, hi_r, lo_c, hi_c = top - margin, top + size + margin, left - margin, left + size + margin
  outer = (r >= lo_r) & (r < hi_r) & (c >= lo_c) & (c < hi_c)
  inner = (r >= lo_r + width) & (r < hi_r - width) & (c >= lo_c + width) & (c < hi_c - width)
  out = image.copy()
  out[outer & ~inner] = RED
  return out


def repeat_pixels(image_HWC: np.ndarray, zoom: int) -> np.ndarray:
  """Each pixel as a ``zoom`` x ``zoom`` block."""
  return np.repeat(np.repeat(image_HWC, zoom, axis=0), zoom, axis=1)
