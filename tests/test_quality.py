"""Tests for deconv_jax.quality: each measurement on inputs whose answer is known in closed form."""

import itertools
import re
from types import SimpleNamespace

import dm_pix
import jax
import numpy as np
import pytest
import scipy

from deconv_jax import attribution, measure, quality, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.tasks import classifier

H = W = 16


def grid(h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
  return np.meshgrid(np.arange(h), np.arange(w), indexing="ij")


def as_nhwc(image_HW: np.ndarray, n: int = 1, c: int = 1) -> np.ndarray:
  return np.broadcast_to(image_HW[None, :, :, None], (n, *image_HW.shape, c)).copy()


def smooth_image() -> np.ndarray:
  """An off-centre Gaussian blob in [0, 1], ``[1, H, W, 1]``: its spectrum sits near DC.

  Off-centre because a blob symmetric about 7.5 has *exactly* zero power at the alias points (pairs i, 15 - i cancel).
  """
  i, j = grid()
  return as_nhwc(np.exp(-((i - 6.3) ** 2 + (j - 8.6) ** 2) / (2 * 2.0**2)))


# ----------------------------------------------------------------------------
# FID.
# ----------------------------------------------------------------------------


def test_gaussian_stats_matches_definition():
  x = np.random.default_rng(0).normal(size=(50, 3))
  mu, sigma = quality.gaussian_stats(x)
  centered = x - x.mean(0)
  np.testing.assert_allclose(mu, x.mean(0))
  np.testing.assert_allclose(sigma, centered.T @ centered / 49)
  assert quality.gaussian_stats(x[:, :1])[1].shape == (1, 1)
  with pytest.raises(ValueError, match="N >= 2"):
    quality.gaussian_stats(x[:1])


def test_fid_of_a_set_with_itself_is_zero_and_fid_is_symmetric():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(200, 8)), rng.normal(size=(300, 8)) * 1.5 + 0.3
  assert quality.fid(a, a) == pytest.approx(0.0, abs=1e-6)
  assert quality.fid(a, b) > 0.1
  assert quality.fid(a, b) == pytest.approx(quality.fid(b, a), rel=1e-6)


def test_fid_with_equal_covariances_is_squared_mean_distance():
  sigma = np.random.default_rng(2).normal(size=(5, 5))
  sigma = sigma @ sigma.T + 0.1 * np.eye(5)
  mu1, mu2 = np.arange(5.0), np.arange(5.0)[::-1]
  assert quality.frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2), rel=1e-6)


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
  rng = np.random.default_rng(3)
  s1, s2 = rng.uniform(0.1, 4, size=6), rng.uniform(0.1, 4, size=6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  assert quality.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_handles_singular_covariances():
  """N < D makes both covariances singular; the result is finite, nonnegative, and ~0 for a set with itself."""
  x = np.random.default_rng(4).normal(size=(5, 20))
  y = np.random.default_rng(5).normal(size=(5, 20))
  assert quality.fid(x, x) == pytest.approx(0.0, abs=1e-4)
  assert np.isfinite(quality.fid(x, y)) and quality.fid(x, y) > 0
  zero = np.zeros((3, 3))
  assert quality.frechet_distance(np.zeros(3), zero, np.ones(3), zero) == pytest.approx(3.0)


def test_fid_grows_with_the_shift():
  x = np.random.default_rng(6).normal(size=(500, 4))
  fids = [quality.fid(x, x + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
  assert fids[0] == pytest.approx(0.0, abs=1e-6)
  assert all(a < b for a, b in itertools.pairwise(fids))
  np.testing.assert_allclose(fids, [4 * s**2 for s in (0.0, 0.5, 1.0, 2.0)], atol=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
  for mu2, sigma2 in [(np.zeros(2), np.eye(2)), (np.zeros(2), np.eye(3)), (np.zeros(3), np.eye(2))]:
    with pytest.raises(ValueError) as info:
      quality.frechet_distance(np.zeros(3), np.eye(3), mu2, sigma2)
    assert str(info.value) == f"shapes do not match: mu (3,), {mu2.shape}; sigma (3, 3), {sigma2.shape}"
  with pytest.raises(ValueError) as info:
    quality.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))
  assert str(info.value) == "shapes do not match: mu (2,), (2,); sigma (3, 3), (3, 3)"


def test_gaussian_stats_takes_two_examples_and_names_fewer():
  mu, sigma = quality.gaussian_stats(np.array([[0.0, 1.0], [2.0, 5.0]]))
  np.testing.assert_allclose(mu, [1.0, 3.0])
  np.testing.assert_allclose(sigma, [[2.0, 4.0], [4.0, 8.0]])
  with pytest.raises(ValueError) as info:
    quality.gaussian_stats(np.zeros((1, 2)))
  assert str(info.value) == "features must be [N, F] with N >= 2, got shape (1, 2)"


def test_frechet_distance_retries_a_non_finite_root_with_eps_on_the_diagonal(monkeypatch):
  """When ``sqrtm(S1 S2)`` is not finite the distance is taken with ``S + eps I``; for diagonal covariances that root
  is ``sqrt((s1 + eps) (s2 + eps))``. The first root is made non-finite here (the retry is for near-singular products,
  which no small example makes reliably); the arithmetic of the retry is what is checked, for two eps."""
  calls = []

  def sqrtm(m):
    calls.append(m)
    return np.full_like(m, np.nan) if len(calls) % 2 == 1 else scipy_sqrtm(m)

  scipy_sqrtm = quality.linalg.sqrtm
  monkeypatch.setattr(quality.linalg, "sqrtm", sqrtm)
  s1, s2 = np.array([1e-6, 2e-6, 4.0]), np.array([3e-6, 1e-6, 1.0])
  mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([0.5, 1.0, 0.0])
  for eps in (1e-6, 0.25):
    kwargs = {} if eps == 1e-6 else {"eps": eps}  # the default is 1e-6
    got = quality.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), **kwargs)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt((s1 + eps) * (s2 + eps)))
    assert got == pytest.approx(max(expected, 0.0), rel=1e-9, abs=1e-15), eps
  assert len(calls) == 4


def test_frechet_distance_drops_a_round_off_imaginary_part_and_refuses_a_large_one(monkeypatch):
  imaginary = {"part": 1e-4}
  monkeypatch.setattr(quality.linalg, "sqrtm", lambda m: np.diag(np.sqrt(np.diag(m))) + 1j * imaginary["part"])
  sigma = np.diag([4.0, 1.0])
  assert quality.frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma) == pytest.approx(0.0, abs=1e-12)
  imaginary["part"] = 0.01
  with pytest.raises(ValueError) as info:
    quality.frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma)
  assert str(info.value) == "sqrtm(S1 S2) has imaginary component 0.01"


# ----------------------------------------------------------------------------
# Classifier score.
# ----------------------------------------------------------------------------


def test_classifier_scores_split_by_default_once_and_at_most_once_per_example():
  logits = np.log(np.eye(5)[[0, 1, 2]] * 0.9 + 0.02)  # N = 3 examples, K = 5 classes
  assert quality.classifier_scores(logits).shape == (1,)  # one split unless asked
  np.testing.assert_allclose(quality.classifier_scores(logits, num_splits=3), [1.0, 1.0, 1.0])  # one example each
  for bad in (0, 4):  # 4 <= K, but more splits than examples
    with pytest.raises(ValueError) as info:
      quality.classifier_scores(logits, num_splits=bad)
    assert str(info.value) == f"logits must be [N, K] with N >= num_splits >= 1, got (3, 5), num_splits={bad}"
  with pytest.raises(ValueError) as info:
    quality.power_spectrum(np.zeros((2, 2)))
  assert str(info.value) == "images must be NHWC, got shape (2, 2)"


def test_classifier_score_of_uniform_predictions_is_one():
  assert quality.classifier_score(np.zeros((40, 10))) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_classifier_score_of_confident_balanced_predictions_is_k(k):
  labels = np.arange(20 * k) % k
  logits = 50.0 * np.eye(k)[labels]  # softmax puts 1 - (k-1) e^-50 on the label
  assert quality.classifier_score(logits) == pytest.approx(k, rel=1e-9)
  with np.errstate(divide="ignore"):
    log_probs = np.log(np.eye(k)[labels])  # exact one-hot probabilities, -inf elsewhere
  with np.errstate(all="raise"):  # the -inf logits must not produce nan on the way
    assert quality.classifier_score(log_probs) == pytest.approx(k, rel=1e-12)


def test_classifier_score_of_confident_predictions_in_one_class_is_one():
  logits = np.zeros((30, 10))
  logits[:, 3] = 50.0
  assert quality.classifier_score(logits) == pytest.approx(1.0)
  with np.errstate(divide="ignore"):
    log_probs = np.log(np.eye(10)[np.full(30, 3)])  # classes never predicted have p(y) = 0 exactly
  with np.errstate(all="raise"):
    assert quality.classifier_score(log_probs) == 1.0


def test_classifier_score_matches_definition_and_splits():
  logits = np.random.default_rng(7).normal(size=(60, 4)) * 3
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

  def reference(p):
    return np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1)))

  assert quality.classifier_score(logits) == pytest.approx(reference(p), rel=1e-9)
  scores = quality.classifier_scores(logits, num_splits=3)
  np.testing.assert_allclose(scores, [reference(p[i : i + 20]) for i in (0, 20, 40)], rtol=1e-9)
  assert quality.classifier_score(logits, num_splits=3) == pytest.approx(scores.mean())
  with pytest.raises(ValueError, match="num_splits"):
    quality.classifier_scores(logits, num_splits=61)


# ----------------------------------------------------------------------------
# Checkerboard share and score.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["checkerboard", "rows", "columns"])
@pytest.mark.parametrize("width", [1, 2])
def test_period_two_patterns_have_share_one(pattern, width):
  i, j = grid()
  sign = {"checkerboard": (-1.0) ** (i + j), "rows": (-1.0) ** i, "columns": (-1.0) ** j}[pattern]
  images = as_nhwc(0.5 + 0.5 * sign, n=2, c=3)
  assert quality.checkerboard_share(images, width) == pytest.approx(1.0)


def test_smooth_image_has_share_near_zero():
  i, j = grid()
  sinusoid = as_nhwc(0.5 + 0.5 * np.cos(2 * np.pi * (i + 2 * j) / H))
  assert quality.checkerboard_share(sinusoid) == pytest.approx(0.0, abs=1e-12)
  assert quality.checkerboard_share(smooth_image(), width=1) < 1e-6
  assert quality.checkerboard_share(smooth_image(), width=2) < 1e-5


def test_added_checkerboard_raises_the_share():
  i, j = grid()
  smooth = smooth_image()
  artifact = smooth + 0.02 * as_nhwc((-1.0) ** (i + j))
  modulated = smooth * (1 + 0.1 * as_nhwc((-1.0) ** i))  # multiplicative, as uneven deconv overlap produces
  for width in (1, 2):
    base = quality.checkerboard_share(smooth, width)
    assert quality.checkerboard_share(artifact, width) > base + 1e-4
    assert quality.checkerboard_score(modulated, smooth, width) > 10


def test_checkerboard_share_is_pooled_and_counts_the_neighbourhood():
  """One image with an alias point only, one with power one bin away from it: width 1 sees half, width 2 all."""
  i, _ = grid()
  on_alias = (-1.0) ** i
  beside_alias = np.cos(2 * np.pi * (H // 2 - 1) * i / H) * np.sqrt(2)  # same power, at (H/2 - 1, 0) and mirror
  images = np.concatenate([as_nhwc(on_alias), as_nhwc(beside_alias)])
  assert quality.checkerboard_share(images, width=1) == pytest.approx(0.5)
  assert quality.checkerboard_share(images, width=2) == pytest.approx(1.0)


def test_checkerboard_share_leaves_out_dc_only_and_any_power_counts():
  """The total is every bin but DC: power one bin from DC (at (1, 0) and its mirror) as strong as the stripes' gives
  a share of one half. However faint the images, the share is a ratio: a checkerboard of amplitude 1e-4 has 1."""
  i, j = grid()
  stripes = (-1.0) ** i
  lowest = np.cos(2 * np.pi * i / H) * np.sqrt(2)  # the stripes' power, at (1, 0) and (H - 1, 0)
  assert quality.checkerboard_share(as_nhwc(stripes + lowest)) == pytest.approx(0.5)
  assert quality.checkerboard_share(as_nhwc(stripes + lowest.T)) == pytest.approx(0.5)  # at (0, 1) and (0, W - 1)
  assert quality.checkerboard_share(as_nhwc(1e-4 * (-1.0) ** (i + j))) == pytest.approx(1.0)


def test_checkerboard_widths_up_to_the_bound_and_the_errors_whole():
  for h, width in [(14, 4), (16, 3), (16, 4)]:  # 4 * (width - 1) < min(H, W)
    i, j = grid(h, h)
    assert quality.checkerboard_share(as_nhwc((-1.0) ** (i + j)), width) == pytest.approx(1.0)
  cases = [
    (
      lambda: quality.checkerboard_share(np.zeros((1, H, W, 1)), 5),
      "width must be an int with 1 <= width and 4 * (width - 1) < min(H, W), got 5 for 16x16",
    ),
    (
      lambda: quality.checkerboard_share(np.zeros((1, 15, W, 1))),
      "images must be NHWC with even H and W, got shape (1, 15, 16, 1)",
    ),
    (
      lambda: quality.checkerboard_score(np.ones((1, H, W, 1)), np.ones((1, H, W, 1))),
      "reference images have no power at the alias frequencies; the score is undefined",
    ),
    (
      lambda: quality.psnr(np.zeros((1, H, W, 1)), np.zeros((1, H, W, 2))),
      "images must be NHWC of equal shape, got (1, 16, 16, 1) and (1, 16, 16, 2)",
    ),
  ]
  for call, message in cases:
    with pytest.raises(ValueError) as info:
      call()
    assert str(info.value) == message


def test_checkerboard_score_of_images_against_themselves_is_one():
  images = np.random.default_rng(8).uniform(size=(3, H, W, 2))
  assert quality.checkerboard_score(images, images) == pytest.approx(1.0)
  assert quality.checkerboard_share(np.full((2, H, W, 1), 0.3)) == 0.0
  with pytest.raises(ValueError, match="reference"):
    quality.checkerboard_score(images, np.full((2, H, W, 1), 0.3))


def test_power_spectrum_of_stripes_is_one_bin_and_the_alias_mask_is_three():
  i, _ = grid()
  stripes = np.concatenate([as_nhwc(0.3 + 0.2 * (-1.0) ** i), as_nhwc(0.6 - 0.4 * (-1.0) ** i)])  # mean removed
  power = quality.power_spectrum(stripes)
  expected = np.zeros((H, W))
  expected[H // 2, 0] = np.mean([(0.2 * H * W) ** 2, (0.4 * H * W) ** 2])  # averaged over the two images
  np.testing.assert_allclose(power, expected, atol=1e-9)
  assert sorted(zip(*np.nonzero(quality.alias_mask(H, W)))) == [(0, W // 2), (H // 2, 0), (H // 2, W // 2)]
  assert quality.alias_mask(H, W, width=2).sum() == 3 * 9
  with pytest.raises(ValueError, match="NHWC"):
    quality.power_spectrum(np.zeros((H, W, 1)))


@pytest.mark.parametrize("shape", [(1, 15, 16, 1), (1, 16, 15, 3), (16, 16, 1)])
def test_checkerboard_share_rejects_odd_sizes_naming_the_shape(shape):
  with pytest.raises(ValueError, match=re.escape(str(shape))):
    quality.checkerboard_share(np.zeros(shape))


def test_checkerboard_share_rejects_widths_reaching_dc():
  with pytest.raises(ValueError, match="width"):
    quality.checkerboard_share(np.zeros((1, 8, 8, 1)), width=3)
  with pytest.raises(ValueError, match="width"):
    quality.checkerboard_share(np.zeros((1, 8, 8, 1)), width=0)


# ----------------------------------------------------------------------------
# PSNR and SSIM.
# ----------------------------------------------------------------------------


def test_psnr_of_identical_images_is_inf():
  images = np.random.default_rng(9).uniform(size=(2, H, W, 3))
  assert quality.psnr(images, images) == np.inf


@pytest.mark.parametrize("error", [0.01, 0.1, 0.3])
def test_psnr_of_constant_error(error):
  a = np.random.default_rng(10).uniform(0.0, 0.5, size=(3, H, W, 1))
  assert quality.psnr(a, a + error) == pytest.approx(-10 * np.log10(error**2), rel=1e-4)


def test_ssim_of_identical_images_is_one_and_of_noise_is_low():
  rng = np.random.default_rng(11)
  images = np.concatenate([smooth_image(), rng.uniform(size=(1, H, W, 1))])
  assert quality.ssim(images, images) == pytest.approx(1.0, abs=1e-5)
  assert quality.ssim(images, rng.uniform(size=images.shape)) < 0.5
  with pytest.raises(ValueError, match="equal shape"):
    quality.ssim(images, images[:1])
  # for data in [0, 1]: SSIM's constants scale with the range, so the value of a known error is that of range 1
  expected = float(np.mean(dm_pix.ssim(jax.numpy.asarray(images + 0.1), jax.numpy.asarray(images), max_val=1.0)))
  assert quality.ssim(images + 0.1, images) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------
# The measurements as `evaluate` takes them (`measure.generated_quality` with a trained classifier run's
# features), on generated sets whose answers are known.
# ----------------------------------------------------------------------------


def test_generated_quality_on_sets_with_known_answers(classifier_run):
  run_dir = classifier_run[0]
  featurizer = measure.Featurizer(run_dir)
  real = measure.all_images(config_lib.base().dataset, "validation")
  saved = workdir_lib.saved_config(run_dir)
  run = workdir_lib.restore(saved, run_dir, classifier)
  logits_of = jax.jit(classifier.build_model(saved, 10).apply)

  def score_by_definition(images):  # exp(E_x KL(p(y|x) || p(y))), p(y|x) the classifier's softmax
    p = scipy.special.softmax(np.asarray(logits_of({"params": run.state.params}, images), np.float64), axis=1)
    return float(np.exp(np.mean(np.sum(p * np.log(p / p.mean(0)), axis=1))))

  same = measure.generated_quality(real, real, featurizer)  # the real set against itself
  assert same["num_generated"] == same["num_real"] == len(real) == 500
  assert same["fid"] == pytest.approx(0, abs=1e-3) and same["checkerboard_score"] == pytest.approx(1)
  assert same["classifier_score"] == pytest.approx(score_by_definition(real), rel=1e-4)
  assert same["classifier_score"] > 2  # a trained classifier tells ten kinds of digit apart

  i, j = grid(*real.shape[1:3])
  checkered = np.clip(real + 0.2 * as_nhwc((-1.0) ** (i + j)), 0, 1)  # the real digits with a checkerboard
  found = measure.generated_quality(checkered, real, featurizer)
  share = quality.checkerboard_share
  assert (
    found["checkerboard_score"] == pytest.approx(share(checkered) / share(real)) and found["checkerboard_score"] > 2
  )
  assert found["fid"] > 1

  one = np.repeat(real[:1], 100, axis=0)  # one digit over and over: a single predicted distribution
  found = measure.generated_quality(one, real, featurizer)
  assert found["classifier_score"] == pytest.approx(1) and found["num_generated"] == 100
  assert found["fid"] > same["fid"] + 1


def test_featurizer_refuses_what_is_not_a_classifier_run(tmp_path):
  gan_run = tmp_path / "gan"
  gan_run.mkdir()
  c = config_lib.base()
  c.task = "gan"
  config_lib.save_json(c, str(gan_run / "config.json"))
  for workdir, key, message in [
    ("", "measure.classifier_workdir", "config.measure.classifier_workdir='' is not a training run (no config.json)"),
    (str(tmp_path), "measure.real", f"config.measure.real={str(tmp_path)!r} is not a training run (no config.json)"),
    (
      str(gan_run),
      "measure.classifier_workdir",
      f"config.measure.classifier_workdir={str(gan_run)!r} is a 'gan' run, not a classifier run",
    ),
  ]:
    kwargs = {} if key == "measure.classifier_workdir" else {"key": key}  # the default key, or the one given
    with pytest.raises(config_lib.ConfigError, match=f"^{re.escape(message)}$"):
      measure.Featurizer(workdir, **kwargs)


def test_featurizer_of_a_classifier_without_dense_layers_takes_its_last_pooling(tmp_path):
  c = config_lib.base()
  # Kernel 4: 28 -> 25 -> 12, so one row or column of padding (29 -> 26 -> 13) would show in the features.
  c.model.features, c.model.dense, c.model.kernel_size = (4,), (), 4
  c.num_train_steps = c.eval_every_steps = 1
  train.train_and_evaluate(c, str(tmp_path))
  images = measure.all_images(c.dataset, "validation")[:6]
  features, logits = measure.Featurizer(str(tmp_path))(images)
  run = workdir_lib.restore(c, str(tmp_path), classifier)
  acts = attribution.activations(classifier.build_model(c, 10), {"params": run.state.params}, images)
  np.testing.assert_allclose(features, acts["pool1"].reshape(6, -1), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(logits, acts["logits"], rtol=1e-6, atol=1e-6)
  # In batches of 4 (the last one padded) the same; images of another shape are refused, naming both shapes.
  np.testing.assert_allclose(measure.Featurizer(str(tmp_path))(images, batch_size=4)[0], features, rtol=1e-6)
  message = "images (27, 28, 1) do not match the classifier's (28, 28, 1)"
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    measure.Featurizer(str(tmp_path))(images[:, 1:])


def test_generator_quality_measures_what_the_task_generates_against_the_configured_real_set(classifier_run):
  c = config_lib.base()
  c.measure.classifier_workdir, c.measure.num_samples = classifier_run[0], 300
  validation = measure.all_images(c.dataset, "validation")
  asked = []

  def generate_many(state, n):  # a task that "generates" the validation digits
    asked.append((state, n))
    return validation[:n]

  task = SimpleNamespace(generate_many=generate_many)
  found = measure.generator_quality(task, "the state", c)
  assert asked == [("the state", 300)]
  assert found == measure.generated_quality(validation[:300], validation, measure.Featurizer(classifier_run[0]))
  assert found["num_real"] == 500  # no measure.real_*: the eval split
  c.measure.real_source, c.measure.real_split = "embedded", "train"
  assert len(measure.real_images(c)) == 4500
  np.testing.assert_array_equal(measure.real_images(c)[:3], measure.all_images(c.dataset, "train")[:3])
