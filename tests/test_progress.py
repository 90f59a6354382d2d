"""The console of a run: a bar where someone watches, one-line records with a smoothed ETA elsewhere."""

import io

import pytest

from deconv_jax import progress


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_records_without_a_terminal_have_a_smoothed_eta():
  out = io.StringIO()
  p = progress.Progress(1000, bar=None, stream=out)  # a StringIO is no terminal: one-line records
  assert p.log(100, {"loss": 0.5}, interval_rate=10.0) == pytest.approx(900 / 10.0)
  # One slow interval (an eval, a checkpoint) moves the ETA by the smoothing weight, not to 800 / 1.
  assert p.log(200, {"loss": 0.4}, interval_rate=1.0) == pytest.approx(800 / (0.3 * 1.0 + 0.7 * 10.0))
  p.write("an eval line")
  p.close()
  lines = out.getvalue().splitlines()
  assert lines == [
    "step 100/1000 | train loss 0.5 | ETA 0:01:30",
    "step 200/1000 | train loss 0.4 | ETA 0:01:50",
    "an eval line",
  ]


def test_a_terminal_gets_a_bar_with_rate_and_the_last_metrics():
  out = Terminal()
  p = progress.Progress(10, start=2, stream=out)
  p.step(3)
  p.log(5, {"loss": 0.25, "steps_per_sec": 4.0}, interval_rate=4.0)
  p.write("an eval line")
  p.close()
  screen = out.getvalue()
  assert "5/10 [" in screen and "step/s" in screen and "loss 0.25" in screen
  assert "steps_per_sec" not in screen and "ETA" not in screen
  assert "an eval line\n" in screen


def test_format_seconds():
  assert progress.format_seconds(3725.4) == "1:02:05"
