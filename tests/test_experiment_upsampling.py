"""The up-sampling study: statistics over seeds on hand-made numbers, the checkerboard score on generators and
images whose artifacts are known, the figures, and a tiny two-seed sweep end to end."""

import itertools
import json
import math
import os

import matplotlib.image
import numpy as np
import pytest
import test_gan
from conftest import REPO
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from deconv_jax import config as config_lib
from deconv_jax import figures, measure, quality, train
from deconv_jax.experiments.upsampling import checkerboard_check, stats, study, variants
from deconv_jax.experiments.upsampling import figures as study_figures

# ----------------------------------------------------------------------------
# Statistics over seeds.
# ----------------------------------------------------------------------------


def test_summarize_gives_the_sample_standard_deviation():
  assert stats.summarize([1, 2, 3]) == {"mean": 2.0, "std": 1.0, "values": [1.0, 2.0, 3.0]}  # ddof=1: sqrt(2 / 2)
  assert stats.summarize([4.0]) == {"mean": 4.0, "std": None, "values": [4.0]}
  assert stats.mean_std(stats.summarize([1, 2, 3]), 1) == "2.0 ± 1.0"
  assert stats.mean_std(stats.summarize([4.0]), 2) == "4.00"
  with pytest.raises(ValueError, match="no values"):
    stats.summarize([])


def test_paired_comparison_on_hand_made_numbers():
  # Differences 1, 1, 1, 0.5: mean 0.875, sample sd 0.25, so t = 0.875 / (0.25 / sqrt(4)) = 7, with 3 degrees of
  # freedom.
  found = stats.paired_comparison([1, 2, 3, 4], [0, 1, 2, 3.5])
  # Student's t with 3 degrees of freedom in closed form: P(|T| > t) = 1 - (2 / pi) (x / (1 + x^2) + atan x),
  # x = t / sqrt(3).
  x = 7 / math.sqrt(3)
  p = 1 - 2 / math.pi * (x / (1 + x**2) + math.atan(x))
  assert found["difference"] == pytest.approx(0.875) and found["t"] == pytest.approx(7.0) and found["df"] == 3
  assert found["p"] == pytest.approx(p, rel=1e-9) and p == pytest.approx(0.00599, abs=1e-5)
  assert found["verdict"] == "exceeds spread"
  # Differences -0.5, 1, -0.2: mean 0.1 against a spread of 0.79.
  within = stats.paired_comparison([1, 2, 3], [1.5, 1.0, 3.2])
  assert within["difference"] == pytest.approx(0.1) and within["p"] > 0.5 and within["verdict"] == "within spread"


def test_paired_comparison_without_spread():
  one = stats.paired_comparison([3.0], [1.0])
  assert one == {"difference": 2.0, "t": None, "df": None, "p": None, "verdict": "n/a: one seed"}
  same = stats.paired_comparison([2, 3], [1, 2])  # every difference 1: scipy would say nan
  assert (same["t"], same["p"], same["verdict"]) == (math.inf, 0.0, "exceeds spread")
  assert stats.paired_comparison([2, 3], [2, 3])["p"] == 1.0
  with pytest.raises(ValueError, match="equal-length"):
    stats.paired_comparison([1, 2], [1])


def test_comparisons_are_the_study_pairs_among_the_swept_variants():
  pairs = variants.comparisons(list(variants.VARIANTS))
  assert ("transpose_k3", "transpose_k4") in pairs and ("transpose_k5", "transpose_k4") in pairs
  assert ("resize_conv_nearest_k3", "transpose_k3") in pairs
  assert {a for a, b in pairs if b == "transpose_k4"} == set(variants.VARIANTS) - {"transpose_k4"}
  assert variants.comparisons(["subpixel_k3", "transpose_k4"]) == [("subpixel_k3", "transpose_k4")]
  assert variants.comparisons(["transpose_k3", "subpixel_k3"]) == []


@pytest.mark.parametrize("bad", [0, -2, "x", 2.5, True])
def test_seeds_must_be_a_positive_integer(bad):
  config = config_lib.base()
  config.seed = 3
  assert study.seeds_of(config, 2) == [3, 4]
  with pytest.raises(config_lib.ConfigError, match=rf"^--seeds={bad} is not allowed: .* an integer >= 1"):
    study.seeds_of(config, bad)


# ----------------------------------------------------------------------------
# The checkerboard score where the artifacts are known.
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_digits():
  """The 500 embedded validation digits, ``[500, 28, 28, 1]``."""
  config = config_lib.base()
  return measure.all_images(config.dataset, config.dataset.eval_split)


def test_checkerboard_score_rises_with_the_amplitude_of_a_stride_2_pattern(real_digits):
  scores = checkerboard_check.pattern_scores(real_digits, (0.0, 0.01, 0.03, 0.1, 0.3))
  assert list(scores) == ["(-1)^(i+j)", "(-1)^i"]
  for pattern, values in scores.items():
    assert values[0] == pytest.approx(1.0), pattern
    assert all(a < b for a, b in itertools.pairwise(values)), (pattern, values)
    assert values[-1] > 100, (pattern, values)  # amplitude 0.3 on digits in [0, 1] is a plain checkerboard


@pytest.mark.slow
def test_checkerboard_score_at_initialization_follows_the_kernel_overlap(real_digits):
  """configs/gan.py's generator at initialization (seed 0), against the real digits.

  Equal weights (every up-sampling and output kernel one value) leave only the overlap: kernels 3 and 5 with
  stride 2 overlap unevenly and must score far above kernel 4, and resize-conv lowest (measured, 500 images:
  k3 603, k5 82, k4 4.3, resize-conv 0.02). With random weights every transposed conv is mostly checkerboard
  and resize-conv is not (k4 805, k3 650, resize-conv 8.1); kernel 3 is *not* above kernel 4 there (below it
  on 4 of seeds 0-4): each output phase sums a different random sub-kernel, whatever the overlap, so it is
  not asserted.
  """
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "gan.py"))
  names = ["transpose_k4", "transpose_k3", "transpose_k5", "resize_conv_nearest_k3"]
  found = checkerboard_check.init_checkerboard(config, names, [0], real_digits, num_images=200)
  equal = {name: found[name]["equal"]["mean"] for name in names}
  random = {name: found[name]["random"]["mean"] for name in names}
  assert equal["transpose_k3"] > 50 * equal["transpose_k4"], equal
  assert equal["transpose_k5"] > 5 * equal["transpose_k4"], equal
  assert equal["resize_conv_nearest_k3"] < equal["transpose_k4"], equal
  assert min(random[n] for n in names[:3]) > 10 * random["resize_conv_nearest_k3"] > 10, random


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


def test_centred_spectrum_is_symmetric_with_the_alias_bins_on_its_edges():
  mask = study_figures._centred(quality.alias_mask(8, 8))
  assert mask.shape == (9, 9) and not mask[4, 4]  # DC in the middle
  np.testing.assert_array_equal(mask, mask[::-1, ::-1])
  assert sorted(zip(*np.nonzero(mask))) == [(0, 0), (0, 4), (0, 8), (4, 0), (4, 8), (8, 0), (8, 4), (8, 8)]


def test_spectrum_figure_draws_a_column_per_image_set(real_digits):
  rng = np.random.default_rng(0)
  noisy = np.clip(real_digits[:50] + 0.2 * rng.standard_normal(real_digits[:50].shape), 0, 1)
  spectra = {"real set": quality.power_spectrum(real_digits), "noisy": quality.power_spectrum(noisy)}
  samples = {"real set": real_digits[0], "noisy": noisy[0]}
  two = study_figures.spectrum_figure(spectra, samples, {"noisy": "checkerboard 3.00"}, "50 images")
  one = study_figures.spectrum_figure({"real set": spectra["real set"]}, samples, {}, "50 images")
  panels = lambda fig: [ax for ax in fig.axes if ax.images]  # row by row; colorbars show no image
  red = lambda ax: [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor() == to_rgba(figures.RED)]
  assert len(panels(one)) == 4 and len(panels(two)) == 8  # per column: spectrum, ratio, sample, its centre
  assert two.get_figheight() == one.get_figheight() and len(two.axes) == len(panels(two)) + 2  # 2 colorbars
  assert [len(red(ax)) for ax in panels(two)] == [8, 8, 8, 8, 1, 1, 0, 0]  # alias frames on the spectra, crop frame
  alias = {(r, c) for r, c in zip(*np.nonzero(study_figures._centred(quality.alias_mask(28, 28))))}
  centres = lambda ax: {(p.get_y() + p.get_height() / 2, p.get_x() + p.get_width() / 2) for p in red(ax)}
  assert centres(panels(two)[1]) == centres(panels(two)[2]) == alias  # each frame on an alias bin
  (crop,) = red(panels(two)[5])
  assert (crop.get_x(), crop.get_y(), crop.get_width(), crop.get_height()) == (6.5, 6.5, 14, 14)  # pixels 7 to 20
  np.testing.assert_allclose(panels(two)[7].images[0].get_array(), noisy[0, 7:21, 7:21, 0], atol=1e-6)
  power, ratio = panels(two)[:2], panels(two)[2:4]
  assert [ax.get_title() for ax in power] == ["real set\n", "noisy\ncheckerboard 3.00"]
  assert power[0].images[0].get_clim() == power[1].images[0].get_clim()  # one scale for all
  assert power[0].images[0].get_cmap().name.startswith("viridis") and ratio[1].images[0].get_clim() == (-1, 1)
  np.testing.assert_array_equal(ratio[0].images[0].get_array(), 0)  # the real set against itself
  assert "alias frequencies" in two.get_supxlabel() and "zero frequency at the centre" in two.get_supxlabel()


# ----------------------------------------------------------------------------
# The sweep end to end, and its command's errors.
# ----------------------------------------------------------------------------


def tiny_gan():
  c = test_gan.tiny_gan()
  c.num_train_steps = 2
  return c


@pytest.mark.slow
def test_two_seeds_give_mean_std_paired_tests_the_check_and_the_figures(tmp_path, classifier_run):
  config = tiny_gan()
  config.measure.classifier_workdir = classifier_run[0]
  # A finished run of (transpose_k4, seed 0), as an earlier sweep leaves it.
  finished = tmp_path / "transpose_k4" / "seed_0"
  train.train_and_evaluate(variants.variant_config(config, "transpose_k4"), str(finished))
  trained = (finished / "metrics.jsonl").read_text()

  table = study.sweep(config, str(tmp_path), ["transpose_k4", "subpixel_k3"], num_seeds=2)

  assert (finished / "metrics.jsonl").read_text().startswith(trained)  # reused: only an eval record added
  assert sorted(os.listdir(tmp_path / "subpixel_k3")) == ["seed_0", "seed_1"]
  lines = table.splitlines()
  assert lines[2] == "| variant | FID | classifier score | checkerboard score | training loop (s) |"
  names = [line.split("|")[1].strip() for line in lines[4:9]]
  assert names == [
    "untrained (transpose_k4, step 0)",
    "transpose_k4",
    "subpixel_k3",
    "real: 4500 training digits",
    "real: two halves of the real set, 250 vs 250",
  ]
  assert " ± " in lines[5] and "seeds 0 to 1" in lines[0]

  results = json.loads((tmp_path / "results.json").read_text())
  assert results["seeds"] == [0, 1] and results["num_generated"] == 64 and results["num_real"] == 500
  fid = results["variants"]["subpixel_k3"]["fid"]
  assert len(fid["values"]) == 2 and fid["std"] == pytest.approx(np.std(fid["values"], ddof=1))
  assert [(c["a"], c["b"], c["df"]) for c in results["comparisons"]] == [("subpixel_k3", "transpose_k4", 1)] * 3
  difference = fid["mean"] - results["variants"]["transpose_k4"]["fid"]["mean"]
  assert f"| subpixel_k3 vs transpose_k4 | FID | {difference:+.1f} |" in table
  check = results["checkerboard_check"]
  assert check["amplitudes"] == list(checkerboard_check.AMPLITUDES)
  assert set(check["init"]) == {"transpose_k4", "subpixel_k3"}
  assert all(a < b for values in check["patterns"].values() for a, b in itertools.pairwise(values))
  assert "| a · (-1)^(i+j) | 1.00 |" in table
  assert (tmp_path / "results.md").read_text().strip() == table
  for figure in ("samples.png", "spectrum.png"):
    height, width, _ = matplotlib.image.imread(tmp_path / figure).shape
    assert width > 400 and height > 200, figure


@pytest.mark.slow
def test_sweep_flag_errors_are_one_line(cli, tmp_path):
  cases = [
    (["--seeds=0"], "error: --seeds=0 is not allowed: the number of seeds per variant, an integer >= 1"),
    (["--variants=transpose_k4,deconv"], "error: --variants=transpose_k4,deconv: allowed variants, each at most once"),
  ]
  for args, message in cases:
    result = cli("deconv_jax.experiments.upsampling", f"--workdir={tmp_path}", *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith(message), (args, result.stderr)
