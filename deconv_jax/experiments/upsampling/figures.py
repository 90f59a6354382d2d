"""The study's two figures: the same latents through every variant, and where in the spectrum checkerboards live."""

from __future__ import annotations

import numpy as np
from PIL import Image

from deconv_jax import figures, quality


def samples_figure(shown: list[tuple[str, np.ndarray]], seed: int, zoom: int = 2) -> Image.Image:
  """Each variant's samples (a 4x4 grid, the same latents everywhere) side by side under its name."""
  blocks = []
  for name, images in shown:
    grid = Image.fromarray(figures.image_grid(images, cols=4))
    grid = np.asarray(grid.resize((grid.width * zoom, grid.height * zoom), Image.NEAREST), np.float32) / 255
    blocks.append(figures.captioned(name, grid))
  return figures.figure(
    f"The same {len(shown[0][1])} latents through every up-sampling variant (seed {seed})",
    figures.stack(blocks, axis=1, gap=3 * figures.GAP),
    "A class-conditional generator draws the classes 0-9, then 0-5, in reading order.",
  )


def _centred(spectrum_HW: np.ndarray) -> np.ndarray:
  """``[H + 1, W + 1]``: DC in the middle, and the Nyquist row and column (``±1/2`` cycle per pixel, one
  frequency) on both edges, so that the picture is symmetric."""
  return np.pad(np.fft.fftshift(spectrum_HW), ((0, 1), (0, 1)), mode="wrap")


def _pad_width(block: np.ndarray, width: int) -> np.ndarray:
  return figures.stack([block, np.ones((1, width, 3), np.float32)], axis=0, center=True)[:-1]


def spectrum_figure(
  spectra: dict[str, np.ndarray],
  samples: dict[str, np.ndarray],
  captions: dict[str, str],
  counts: str,
  reference: str = "real set",
  zoom: int = 7,
  decades: float = 1.0,
) -> Image.Image:
  """Where checkerboards live: per column (``reference`` first, then each variant) its mean power spectrum
  ``[H, W]`` (`quality.power_spectrum`; log10, one scale for all), that spectrum divided by the reference's
  (log10, ``±decades``), one sample ``[H, W, C]`` with its centre framed, and that centre enlarged.

  Zero frequency is at the centre of each spectrum, ±1/2 cycle per pixel at its edges; the alias bins that
  the checkerboard score counts (`quality.alias_mask`) are framed in red.
  """
  names = [reference, *(n for n in spectra if n != reference)]
  h, w = spectra[reference].shape
  logs = {name: np.log10(np.maximum(_centred(spectra[name]), 1e-30)) for name in names}
  for log in logs.values():
    log[h // 2, w // 2] = np.nan  # DC: removed by mean-subtracting each image
  top = max(np.nanmax(v) for v in logs.values())
  bottom = max(min(np.nanmin(v) for v in logs.values()), top - 8)
  alias = _centred(quality.alias_mask(h, w))
  crop_at, size = h // 4, h // 2

  def panel(rgb_HW3: np.ndarray) -> np.ndarray:
    image = figures.repeat_pixels(rgb_HW3, zoom)
    for r, c in zip(*np.nonzero(alias)):
      image = figures.frame(image, r * zoom, c * zoom, zoom, margin=2)
    return image

  gray = lambda v: np.repeat((0.5 + 0.5 * np.clip(v, -1, 1))[..., None], 3, axis=-1)
  rows: list[list[np.ndarray]] = [[], [], [], [], []]
  for name in names:
    power = figures.viridis((logs[name] - bottom) / (top - bottom))
    power[np.isnan(logs[name])] = 1.0
    ratio = np.nan_to_num((logs[name] - logs[reference]) / decades)  # DC: mid-gray
    sample = figures.rgb(samples[name])
    rows[0].append(figures.text(f"{name}\n{captions.get(name, '')}", center=True))
    rows[1].append(panel(power))
    rows[2].append(panel(gray(ratio)))
    rows[3].append(figures.frame(figures.repeat_pixels(sample, zoom), crop_at * zoom, crop_at * zoom, size * zoom))
    crop = sample[crop_at : crop_at + size, crop_at : crop_at + size]
    rows[4].append(figures.repeat_pixels(crop, (h * zoom) // size))
  labels = [
    "",
    "mean power\nspectrum\n(log10)",
    f"ratio to the\n{reference}\n(log10, ±{decades:g})",
    "one sample",
    f"its centre,\n{(h * zoom) // size}x",
  ]
  width = max(block.shape[1] for row in rows for block in row)
  label_width = max(figures.text(t).shape[1] for t in labels)
  lines = []
  for label, row in zip(labels, rows):
    cells = [figures.text(label, label_width), *(_pad_width(block, width) for block in row)]
    lines.append(figures.stack(cells, axis=1, gap=2 * figures.GAP))
  bar = np.linspace(0, 1, 256)[None, :].repeat(12, axis=0)
  legend = figures.stack(
    [
      figures.text(f"power: 10^{bottom:.1f}"),
      figures.viridis(bar),
      figures.text(f"10^{top:.1f}        ratio: 1/{10**decades:g}"),
      gray(2 * bar - 1),
      figures.text(f"{10**decades:g}x"),
    ],
    axis=1,
    gap=figures.GAP,
    center=True,
  )
  return figures.figure(
    f"Where checkerboards live: mean power spectra of generated images and of the {reference} ({counts})",
    figures.stack([figures.stack(lines, axis=0, gap=figures.GAP), legend], axis=0, gap=3 * figures.GAP),
    "Spectra: |FFT|^2 of each mean-subtracted image, averaged; zero frequency at the centre (removed: white), "
    "±1/2 cycle per pixel at the edges;\nhorizontal frequency left to right, vertical top to bottom. Red frames: "
    "the stride-2 alias frequencies (1/2, 0), (0, 1/2), (1/2, 1/2), whose share of the power\nthe checkerboard "
    f"score compares with the {reference}'s. Ratio: mid-gray = as much power as the {reference}, white = more, "
    "black = less.\nBottom rows: one generated image (the same latent and class in every column), its framed "
    "centre enlarged.",
  )
