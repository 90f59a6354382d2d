"""Statistics over seeds: mean and sample standard deviation, and the paired t-test of two variants."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # a difference "exceeds spread" when its paired t-test gives p < ALPHA


def summarize(values: Sequence[float]) -> dict[str, Any]:
  """``{"mean", "std", "values"}`` of per-seed values; ``std``: the sample standard deviation (ddof=1), None for one."""
  values = [float(v) for v in values]
  if not values:
    raise ValueError("no values to summarize")
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return {"mean": float(np.mean(values)), "std": std, "values": values}


def paired_comparison(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> dict[str, Any]:
  """Does ``a - b``, paired by seed, exceed the seed-to-seed spread? A two-sided paired t-test over the pairs.

  Returns ``{"difference": mean(a - b), "t", "df", "p", "verdict"}``, ``t`` and ``p`` from
  ``scipy.stats.ttest_rel(a, b)`` (``df = n - 1``); verdict ``"exceeds spread"`` when ``p < alpha``, else
  ``"within spread"``. With one pair there is no spread: ``t``, ``df`` and ``p`` are None and the verdict is
  ``"n/a: one seed"``. When every difference is the same, ``t`` is ``±inf`` and ``p`` 0 (``t = 0``, ``p = 1`` if
  they are all 0), where scipy would give nan.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or len(a) < 1:
    raise ValueError(f"paired values must be two equal-length lists, got {len(a)} and {len(b)}")
  d = a - b
  result = {"difference": float(d.mean()), "t": None, "df": None, "p": None, "verdict": "n/a: one seed"}
  if len(d) == 1:
    return result
  if np.all(d == d[0]):
    t, p = (0.0, 1.0) if d[0] == 0 else (float(np.copysign(np.inf, d[0])), 0.0)
  else:
    t, p = (float(x) for x in stats.ttest_rel(a, b))
  return {**result, "t": t, "df": len(d) - 1, "p": p, "verdict": "exceeds spread" if p < alpha else "within spread"}


def mean_std(summary: dict[str, Any], digits: int) -> str:
  """``"10.4 ± 0.5"``; the mean alone when there is no spread (one seed)."""
  if summary["std"] is None:
    return f"{summary['mean']:.{digits}f}"
  return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
