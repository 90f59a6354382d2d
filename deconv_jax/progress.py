"""What a training run shows while it runs: a live bar where someone watches, one-line records where nobody does.

On an interactive terminal or in a notebook (Jupyter, Colab) `Progress` draws a
``tqdm.auto`` bar: steps done, a smoothed steps/s, the ETA from it, and the last
logged train metrics. Elsewhere (a log file, a scheduler, a pipe) it prints one
line per log step, whose ETA comes from an exponential moving average of the
measured rates, so one slow interval (an eval, a checkpoint) does not make it jump.
Only process 0 prints.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

import jax
from tqdm.auto import tqdm

SMOOTHING = 0.3  # weight of the newest rate in the moving averages (tqdm's default)


def in_notebook() -> bool:
  """True inside an IPython kernel (Jupyter, Colab), where ``tqdm.auto`` draws a widget."""
  try:
    from IPython import get_ipython
  except ImportError:
    return False
  shell = get_ipython()
  return shell is not None and "IPKernelApp" in shell.config


def interactive(stream: TextIO | None = None) -> bool:
  """Is someone watching: a notebook, or ``stream`` (default stderr) is a terminal."""
  stream = sys.stderr if stream is None else stream
  return in_notebook() or (hasattr(stream, "isatty") and stream.isatty())


def format_seconds(seconds: float) -> str:
  """``H:MM:SS``."""
  seconds = round(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_metrics(metrics: dict[str, Any]) -> str:
  return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


class Progress:
  """``step(n)`` after each step is done, ``log(step, metrics)`` at each log step, ``write(line)`` for messages.

  ``bar=None`` chooses by `interactive`; ``bar=True`` forces the bar (onto ``stream``).
  """

  def __init__(self, total: int, start: int = 0, *, bar: bool | None = None, stream: TextIO | None = None):
    self.total = total
    self._active = jax.process_index() == 0
    self._stream = stream
    self._rate: float | None = None  # smoothed steps/s for the one-line records
    use_bar = interactive(stream) if bar is None else bar
    self._bar = None
    if self._active and use_bar:
      self._bar = tqdm(
        total=total, initial=start, unit="step", smoothing=SMOOTHING, file=stream, dynamic_ncols=True, leave=True
      )

  def write(self, line: str) -> None:
    """A message: above the bar if there is one, else a plain line on stdout."""
    if not self._active:
      return
    if self._bar is not None:
      self._bar.write(line, file=self._stream)
    else:
      print(line, file=self._stream or sys.stdout, flush=True)

  def step(self, n: int = 1) -> None:
    """``n`` more steps are done (computed, not only dispatched)."""
    if self._bar is not None:
      self._bar.update(n)

  def log(self, step: int, metrics: dict[str, Any], interval_rate: float) -> float:
    """Records a log step's train metrics and the rate of the interval before it; returns the ETA in seconds.

    The ETA divides the remaining steps by the moving average of the interval rates.
    """
    self._rate = interval_rate if self._rate is None else SMOOTHING * interval_rate + (1 - SMOOTHING) * self._rate
    eta = (self.total - step) / max(self._rate, 1e-9)
    if self._bar is not None:
      self._bar.set_postfix_str(format_metrics({k: v for k, v in metrics.items() if k != "steps_per_sec"}))
    else:
      self.write(f"step {step}/{self.total} | train {format_metrics(metrics)} | ETA {format_seconds(eta)}")
    return eta

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
