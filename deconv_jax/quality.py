"""Image-quality measurements for generated images: pure functions of arrays, no models, no state.

Images are NHWC floats in ``[0, 1]``; features ``[N, F]``; classifier logits ``[N, K]``. Everything except
PSNR/SSIM (``jax.numpy``; SSIM from ``dm_pix``) is computed in float64 numpy and returns a Python float.

- FID (Heusel et al., 2017): Fréchet distance between Gaussians fitted to two feature sets. The features may come
  from any network (here usually our own classifier, not Inception), so the numbers compare only with numbers from
  the same feature extractor and the same sample counts.
- Classifier score: the Inception Score (Salimans et al., 2016) with any classifier in place of Inception.
- Checkerboard share/score: the fraction of spectral power at the stride-2 alias frequencies, where the periodic
  artifacts of uneven transposed-convolution overlap live (Odena, Dumoulin, Olah, 2016).
- PSNR and SSIM for data range 1. `psnr_from_mse` is the one PSNR formula; the reconstruction tasks call it
  inside their compiled eval step, with a floor on the MSE.
"""

from __future__ import annotations

import warnings

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg, special


def gaussian_stats(features_NF: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[F]`` and unbiased covariance ``[F, F]`` (``np.cov(rowvar=False)``) of features ``[N, F]``, float64."""
  features_NF = np.asarray(features_NF, dtype=np.float64)
  if features_NF.ndim != 2 or features_NF.shape[0] < 2:
    raise ValueError(f"features must be [N, F] with N >= 2, got shape {features_NF.shape}")
  return features_NF.mean(axis=0), np.atleast_2d(np.cov(features_NF, rowvar=False))


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *, eps: float = 1e-6
) -> float:
  """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``: the squared 2-Wasserstein distance of two Gaussians.

  mu ``[F]``, sigma ``[F, F]``. As in pytorch-fid: when ``sqrtm(S1 S2)`` is not finite (near-singular product, e.g.
  N <= D) it is retried as ``sqrtm((S1 + eps I)(S2 + eps I))``; an imaginary part from round-off is dropped (a
  ValueError if its diagonal exceeds 1e-3); a tiny negative result from round-off is clamped to 0.
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, {sigma2.shape}")
  with warnings.catch_warnings():  # sqrtm warns on singular products, which the retry below handles.
    warnings.simplefilter("ignore", linalg.LinAlgWarning)
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
      offset = np.eye(sigma1.shape[0]) * eps
      covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"sqrtm(S1 S2) has imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
  return max(float(distance), 0.0)


def fid(features_a_NF: np.ndarray, features_b_MF: np.ndarray) -> float:
  """Fréchet distance between the Gaussians fitted (`gaussian_stats`) to features ``[N, F]`` and ``[M, F]``.

  FID is biased upward by finite samples, and the bias depends on N, M (the two sets' sizes) and F: only compare
  FIDs computed with the same sample counts and the same feature extractor, and state N and M next to every number.
  """
  return frechet_distance(*gaussian_stats(features_a_NF), *gaussian_stats(features_b_MF))


def classifier_scores(logits_NK: np.ndarray, num_splits: int = 1) -> np.ndarray:
  """Per-split classifier scores ``[num_splits]``: ``exp(E_x KL(p(y|x) || p(y)))`` on each contiguous split.

  ``p(y|x) = softmax(logits)`` and ``p(y)`` is its mean over the split, computed in log space (``log_softmax``,
  ``logsumexp``). For probabilities pass ``log(probs)``; exact zeros (``-inf`` logits) contribute 0 (``0 log 0 = 0``).
  The score lies in ``[1, K]``: 1 when every prediction is the same, K for confident predictions balanced over K.
  """
  logits_NK = np.asarray(logits_NK, dtype=np.float64)
  if logits_NK.ndim != 2 or not 1 <= num_splits <= logits_NK.shape[0]:
    raise ValueError(f"logits must be [N, K] with N >= num_splits >= 1, got {logits_NK.shape}, {num_splits=}")
  scores = []
  for part in np.array_split(logits_NK, num_splits):
    log_p_yx = special.log_softmax(part, axis=1)
    log_p_y = special.logsumexp(log_p_yx, axis=0) - np.log(part.shape[0])
    log_p_y = np.where(np.isfinite(log_p_y), log_p_y, 0.0)  # p(y) = 0 only where every p(y|x) = 0: terms are 0
    p_yx = np.exp(log_p_yx)
    kl_N = np.sum(p_yx * np.where(p_yx > 0, log_p_yx - log_p_y, 0.0), axis=1)
    scores.append(np.exp(kl_N.mean()))
  return np.array(scores)


def classifier_score(logits_NK: np.ndarray, num_splits: int = 1) -> float:
  """Mean over splits of `classifier_scores` (its ``.std()`` is the spread usually reported beside it)."""
  return float(classifier_scores(logits_NK, num_splits).mean())


def power_spectrum(images_NHWC: np.ndarray) -> np.ndarray:
  """Mean spectral power ``[H, W]``: ``|FFT2|^2`` over H, W of each mean-subtracted image and channel, averaged over
  images and channels; float64, in `np.fft.fft2` order (DC at ``[0, 0]``, Nyquist at ``[H/2, .]`` and ``[., W/2]``;
  `np.fft.fftshift` centres DC for display)."""
  images = np.asarray(images_NHWC, dtype=np.float64)
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC, got shape {images.shape}")
  centered = images - images.mean(axis=(1, 2), keepdims=True)
  return np.mean(np.abs(np.fft.fft2(centered, axes=(1, 2))) ** 2, axis=(0, 3))


def alias_mask(h: int, w: int, width: int = 1) -> np.ndarray:
  """The alias set of `checkerboard_share` as a boolean ``[h, w]`` in `np.fft.fft2` order: every bin whose
  wrap-around Chebyshev distance to ``(h/2, 0)``, ``(0, w/2)`` or ``(h/2, w/2)`` is below ``width``."""
  circular = lambda n, k0: np.minimum(np.abs(np.arange(n) - k0), n - np.abs(np.arange(n) - k0)) < width
  near_h, near_w = [(circular(n, 0), circular(n, n // 2)) for n in (h, w)]
  return np.outer(near_h[1], near_w[0]) | np.outer(near_h[0], near_w[1]) | np.outer(near_h[1], near_w[1])


def _alias_power(images_NHWC: np.ndarray, width: int) -> tuple[float, float]:
  """(mean power within ``width`` of the three alias points, mean power of all non-DC bins) (`power_spectrum`)."""
  images = np.asarray(images_NHWC, dtype=np.float64)
  if images.ndim != 4 or images.shape[1] % 2 or images.shape[2] % 2:
    raise ValueError(f"images must be NHWC with even H and W, got shape {images.shape}")
  _, h, w, _ = images.shape
  if not (isinstance(width, int) and width >= 1 and 4 * (width - 1) < min(h, w)):
    raise ValueError(f"width must be an int with 1 <= width and 4 * (width - 1) < min(H, W), got {width} for {h}x{w}")
  power_HW = power_spectrum(images)
  power_HW[0, 0] = 0.0  # DC is excluded from the total (it is ~0 after centering anyway).
  return float(power_HW[alias_mask(h, w, width)].sum()), float(power_HW.sum())


def checkerboard_share(images_NHWC: np.ndarray, width: int = 1) -> float:
  """Share of the non-DC spectral power that lies at the stride-2 alias frequencies; in ``[0, 1]``.

  Each image and channel is mean-subtracted and its power ``|FFT2|^2`` over H, W is summed over images and channels
  (pooled, not a mean of per-image shares). The alias set is every bin whose wrap-around Chebyshev distance to one
  of the Nyquist points ``(H/2, 0)``, ``(0, W/2)``, ``(H/2, W/2)`` is below ``width``: width=1 takes the three bins
  themselves, width=2 their 3x3 neighbourhoods. A period-2 pattern (checkerboard ``(-1)^(i+j)``, stripes ``(-1)^i``)
  has share 1; a smooth image has share near 0; all-constant images have share 0. H and W must be even (ValueError
  naming the shape) and ``4 * (width - 1) < min(H, W)``, so the neighbourhoods never reach DC.
  """
  alias, total = _alias_power(images_NHWC, width)
  return alias / total if total > 0 else 0.0


def checkerboard_score(images_NHWC: np.ndarray, reference_NHWC: np.ndarray, width: int = 1) -> float:
  """``checkerboard_share(images) / checkerboard_share(reference)``: 1 = as much alias power as the reference (real)
  images, > 1 more (periodic artifacts). ValueError if the reference has no alias power at all."""
  reference = checkerboard_share(reference_NHWC, width)
  if reference <= 0:
    raise ValueError("reference images have no power at the alias frequencies; the score is undefined")
  return checkerboard_share(images_NHWC, width) / reference


def _as_images(a: np.ndarray, b: np.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.ndim != 4 or a.shape != b.shape:
    raise ValueError(f"images must be NHWC of equal shape, got {a.shape} and {b.shape}")
  return a, b


def psnr_from_mse(mse: jax.Array, *, mse_floor: float = 0.0) -> jax.Array:
  """PSNR in dB for data range 1 of mean squared errors (any shape): ``-10 log10(max(mse, mse_floor))``.

  With ``mse_floor=0`` an exact match (mse 0) is ``inf``; a floor caps the PSNR at ``-10 log10(mse_floor)``.
  """
  return -10.0 * jnp.log10(jnp.maximum(mse, mse_floor))


def psnr(a_NHWC: np.ndarray, b_NHWC: np.ndarray) -> float:
  """Mean over the batch of each image's PSNR (`psnr_from_mse`, no floor, data range 1); ``inf`` if any a == b."""
  a, b = _as_images(a_NHWC, b_NHWC)
  return float(jnp.mean(psnr_from_mse(jnp.mean((a - b) ** 2, axis=(1, 2, 3)))))


def ssim(a_NHWC: np.ndarray, b_NHWC: np.ndarray) -> float:
  """Mean over the batch of dm_pix.ssim (data range 1, 11x11 Gaussian window σ=1.5, so H, W >= 11); 1 where a == b."""
  return float(jnp.mean(dm_pix.ssim(*_as_images(a_NHWC, b_NHWC), max_val=1.0)))
