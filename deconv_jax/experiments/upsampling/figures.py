"""The study's two figures: the same latents through every variant, and where in the spectrum checkerboards live."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from deconv_jax import figures, quality


def samples_figure(shown: list[tuple[str, np.ndarray]], seed: int, zoom: int = 2) -> Figure:
  """Each variant's samples ``[16, H, W, C]`` (a 4x4 grid, the same latents everywhere) side by side under its
  name; ``zoom``: pixels of the saved PNG per image pixel."""
  grids = [figures.image_grid(images, cols=4) for _, images in shown]
  fig, axes = figures.panels(
    f"The same {len(shown[0][1])} latents through every up-sampling variant (seed {seed})",
    1,
    len(shown),
    panel=zoom * grids[0].shape[0] / figures.DPI,
    footnote="A class-conditional generator draws the classes 0-9, then 0-5, in reading order.",
    extra=(0.6, 0.9),
  )
  for ax, (name, _), grid in zip(axes[0], shown, grids):
    figures.show(ax, grid / 255)
    ax.set_title(name, fontsize="medium")
  return fig


def _centred(spectrum_HW: np.ndarray) -> np.ndarray:
  """``[H + 1, W + 1]``: DC in the middle, and the Nyquist row and column (``±1/2`` cycle per pixel, one
  frequency) on both edges, so that the picture is symmetric."""
  return np.pad(np.fft.fftshift(spectrum_HW), ((0, 1), (0, 1)), mode="wrap")


def spectrum_figure(
  spectra: dict[str, np.ndarray],
  samples: dict[str, np.ndarray],
  captions: dict[str, str],
  counts: str,
  reference: str = "real set",
  zoom: int = 7,
  decades: float = 1.0,
) -> Figure:
  """Where checkerboards live: per column (``reference`` first, then each variant) its mean power spectrum
  ``[H, W]`` (`quality.power_spectrum`; log10, one viridis scale for all), that spectrum divided by the
  reference's (log10, ``±decades``, gray), one sample ``[H, W, C]`` with its centre framed, and that centre
  enlarged; ``zoom``: pixels of the saved PNG per frequency bin.

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
  alias = list(zip(*np.nonzero(_centred(quality.alias_mask(h, w)))))
  crop_at, size = h // 4, h // 2
  viridis = matplotlib.colormaps["viridis"].with_extremes(bad="white")

  fig, axes = figures.panels(
    f"Where checkerboards live: mean power spectra of generated images and of the {reference} ({counts})",
    4,
    len(names),
    panel=zoom * (h + 1) / figures.DPI,
    footnote="Spectra: |FFT|^2 of each mean-subtracted image, averaged; zero frequency at the centre (removed: "
    "white), ±1/2 cycle per pixel at the edges;\nhorizontal frequency left to right, vertical top to bottom. Red "
    "frames: the stride-2 alias frequencies (1/2, 0), (0, 1/2), (1/2, 1/2), whose share of the power\nthe "
    f"checkerboard score compares with the {reference}'s. Ratio: mid-gray = as much power as the {reference}, "
    "white = more, black = less.\nBottom rows: one generated image (the same latent and class in every column), "
    "its framed centre enlarged.",
    extra=(2.6, 1.9),
  )
  for col, name in enumerate(names):
    power, ratio, sample, centre = axes[:, col]
    power_image = power.imshow(logs[name], cmap=viridis, vmin=bottom, vmax=top, interpolation="nearest")
    ratio_image = ratio.imshow(
      np.nan_to_num(logs[name] - logs[reference]),  # DC: mid-gray
      cmap="gray",
      vmin=-decades,
      vmax=decades,
      interpolation="nearest",
    )
    for ax in (power, ratio):
      for r, c in alias:
        figures.frame(ax, r, c, 1, 1, margin=0.3)
    image = np.asarray(samples[name])
    figures.show(sample, image)
    figures.frame(sample, crop_at, crop_at, size, size)
    figures.show(centre, image[crop_at : crop_at + size, crop_at : crop_at + size])
    power.set_title(f"{name}\n{captions.get(name, '')}", fontsize="medium")
  for ax, label in zip(
    axes[:, 0],
    [
      "mean power\nspectrum (log10)",
      f"ratio to the\n{reference} (log10)",
      "one sample",
      f"its centre\n({size}x{size} pixels)",
    ],
  ):
    ax.set_ylabel(label)
  bar = fig.colorbar(power_image, ax=axes[0, :], shrink=0.9, pad=0.01)
  bar.set_label("log10 power", fontsize=figures.SMALL)
  bar = fig.colorbar(ratio_image, ax=axes[1, :], shrink=0.9, pad=0.01, ticks=[-decades, 0, decades])
  bar.ax.set_yticklabels([f"1/{10**decades:g}", "1", f"{10**decades:g}x"])
  bar.set_label(f"ratio to the {reference}", fontsize=figures.SMALL)
  return fig
