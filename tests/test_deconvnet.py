"""The deconvnet of a trained run: receptive fields, the top-k search, the figures, and the visualize command."""

import os

import jax
import matplotlib.image
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from matplotlib.text import Text

from deconv_jax import attribution, deconvnet, figures, models


def test_receptive_fields_of_the_default_cnn():
  model = models.CNN()  # 3x3 VALID convs, 2x2 pools
  assert [deconvnet.receptive_field(model, i) for i in (1, 2, 3)] == [(3, 1, 0), (8, 2, 0), (18, 4, 0)]
  same = models.CNN(kernel_size=5, padding="SAME")
  # act2 unit i sees pool1 units i-2..i+2, which see rows 2(i-2)-2 .. 2(i+2)+3: start 2i-6, size 14.
  assert [deconvnet.receptive_field(same, i) for i in (1, 2)] == [(5, 1, -2), (14, 2, -6)]


@pytest.mark.slow
@settings(max_examples=8)
@given(
  kernel_size=st.sampled_from([3, 4, 5]),
  padding=st.sampled_from(["VALID", "SAME"]),
  pool=st.sampled_from([1, 2, 3]),
  layer=st.sampled_from([1, 2]),
  seed=st.integers(0, 99),
)
def test_a_projection_stays_inside_the_receptive_field(kernel_size, padding, pool, layer, seed):
  # The box comes from shape arithmetic, the projection from the VJP: they must agree.
  model = models.CNN(features=(4, 4), kernel_size=kernel_size, padding=padding, pool=pool, dense=(8,), num_classes=3)
  x = jax.random.uniform(jax.random.key(seed), (2, 28, 28, 1))
  variables = model.init(jax.random.key(seed + 1), x)
  name = f"act{layer}"
  acts = attribution.activations(model, variables, x)[name]
  channels = np.asarray(acts.max(axis=(0, 1, 2)).argmax()).repeat(2)  # a live channel
  projections, positions = deconvnet.projector(model, name)(variables, x, channels)
  size, jump, start = deconvnet.receptive_field(model, layer)
  for b in range(2):
    top, left = (start + jump * int(p) for p in positions[b])
    inside = np.zeros(x.shape[1:3], bool)
    inside[max(top, 0) : top + size, max(left, 0) : left + size] = True
    assert np.all(projections[b][~inside] == 0)
    assert np.any(projections[b][inside] != 0)


@pytest.mark.slow
def test_projector_batches_equal_one_by_one():
  model = models.CNN(features=(6, 8), dense=(8,), num_classes=3)
  x = jax.random.uniform(jax.random.key(0), (4, 16, 16, 1))
  variables = model.init(jax.random.key(1), x)
  channels = np.array([0, 1, 2, 3], np.int32)
  project = deconvnet.projector(model, "act2")
  projections, _ = project(variables, x, channels)
  for b in range(4):
    target = attribution.strongest("act2", int(channels[b]))
    one = attribution.attribute(model, variables, x[b : b + 1], target, "deconvnet", seed="values")
    np.testing.assert_allclose(projections[b], one[0], rtol=1e-5, atol=1e-7)


def test_choose_picks_channels_whose_top_k_all_fire():
  maxima = np.array([[9.0, 0, 1, 5], [8, 0, 2, 5], [0, 0, 3, 5]])  # [N=3 images, C=4 channels]
  channels, order = deconvnet.choose(maxima, top_k=2, num_channels=2, channels=())
  assert channels == [0, 3]  # 2nd-best activations: 8, 0, 2, 5
  np.testing.assert_array_equal(order, [[0, 1], [0, 1]])
  channels, order = deconvnet.choose(maxima, top_k=3, num_channels=2, channels=())
  assert channels == [2, 3]  # 3rd-best: 0, 0, 1, 5
  np.testing.assert_array_equal(order[0], [2, 1, 0])
  channels, order = deconvnet.choose(maxima, top_k=1, num_channels=4, channels=[1])
  assert channels == [1] and order.shape == (1, 1)


def image_axes(fig):
  """The panels that show an image, row by row (colorbars show none)."""
  return [ax for ax in fig.axes if ax.images]


def red_frames(ax):
  return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_edgecolor() == to_rgba(figures.RED)]


def png_shape(fig, path):
  figures.save(fig, str(path))
  return matplotlib.image.imread(str(path)).shape


def test_figure_text_is_readable_and_the_methods_table_has_a_row_per_image(tmp_path):
  images = np.zeros((3, 28, 28, 1), np.float32)
  ramp = np.linspace(-1, 2, 28 * 28).reshape(28, 28, 1)
  maps = {m: np.stack([(b + 1) * (i + 1) * ramp for b in range(3)]) for i, m in enumerate(attribution.METHODS)}
  three = deconvnet.methods_figure(images, np.array([1, 2, 3]), np.array([1, 2, 4]), maps)
  two = deconvnet.methods_figure(images[:2], np.array([1, 2]), np.array([1, 2]), {k: v[:2] for k, v in maps.items()})
  panels = image_axes(three)
  k = 1 + len(attribution.METHODS)  # a row per image: it, then each method's map
  assert len(panels) == 3 * k and len(image_axes(two)) == 2 * k
  assert [ax.get_title() for ax in panels[:k]] == [
    "image",
    "saliency",
    "deconvnet",
    "guided backprop",
    "occlusion",
  ]
  assert [ax.get_ylabel() for ax in panels[::k]] == [f"true {t}\npredicted {p}" for t, p in [(1, 1), (2, 2), (3, 4)]]
  for b in range(3):
    for j, m in enumerate(attribution.METHODS, start=1):  # each map on its own scale: 0 mid-gray, max|v| white
      shown = panels[k * b + j].images[0].get_array()
      np.testing.assert_allclose(shown, 0.5 + 0.5 * maps[m][b, :, :, 0] / (2 * (b + 1) * j), rtol=1e-6)
  assert deconvnet.SIGNED_SCALE in three.get_supxlabel()
  (bar,) = [ax for ax in three.axes if not ax.images]  # the maps' scale
  assert [t.get_text() for t in bar.get_yticklabels()] == ["-max|v|", "0", "+max|v|"]
  sizes = [t.get_fontsize() * figures.DPI / 72 for t in three.findobj(Text) if t.get_text().strip()]
  assert min(sizes) >= 12  # pixels: every label, tick and footnote readable in the PNG
  (h3, w3, _), (h2, w2, _) = png_shape(three, tmp_path / "3.png"), png_shape(two, tmp_path / "2.png")
  # one row of panels more; the width moves by the colorbar's label only, which the layout places by its height
  assert abs(w3 - w2) <= 0.03 * w3 and 100 < h3 - h2 < 200


def test_the_methods_figure_draws_whatever_methods_exist(monkeypatch):
  monkeypatch.setattr(attribution, "METHODS", ("saliency", "occlusion"))
  maps = {m: np.ones((2, 28, 28, 1)) for m in attribution.METHODS}
  fig = deconvnet.methods_figure(np.zeros((2, 28, 28, 1)), np.array([1, 2]), np.array([1, 2]), maps)
  assert [ax.get_title() for ax in image_axes(fig)[:3]] == ["image", "saliency", "occlusion"]
  assert len(image_axes(fig)) == 2 * 3
  assert fig.get_suptitle() == "Saliency and occlusion of the predicted class's logit"
  footnote = fig.get_supxlabel()
  assert "saliency: the plain gradient" in footnote and "occlusion: the target's drop" in footnote
  assert "deconvnet" not in footnote


def test_layer_figure_boxes_each_receptive_field_in_red():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(6, 28, 28, 1))  # 3 channels x top 2
  projections = rng.normal(size=(6, 28, 28, 1))
  positions = np.array([[0, 0], [3, 2], [1, 1], [2, 2], [0, 3], [3, 3]])  # act3 units (size 18, jump 4)
  fig = deconvnet.layer_figure(images, projections, positions, [4, 7, 9], (18, 4, 0), "act3", 2)
  panels = image_axes(fig)
  assert len(panels) == 3 * 3  # per channel: its images, their projections, the input under the field
  assert "act3" in fig.get_suptitle() and "receptive field 18x18" in fig.get_suptitle()
  assert [ax.get_ylabel() for ax in panels[::3]] == ["channel 4", "channel 7", "channel 9"]
  captions = ["top 2 images,\nunit boxed", "deconvnet\nof that unit", "input under it\n(18x18)"]
  assert [ax.get_title() for ax in panels[:3]] == captions
  # 2 tiles a row, 28 pixels and a gap of 2 apart; a field past the image's edge is cut at it.
  boxes = [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in red_frames(panels[0])]
  assert boxes == [(-0.5, -0.5, 18, 18), (30 + 8 - 0.5, 12 - 0.5, 18, 16)]
  assert [len(red_frames(ax)) for ax in panels] == [2, 0, 0] * 3
  crops = panels[2].images[0].get_array()  # the input under the field, tiled at the size of whole images
  np.testing.assert_allclose(crops[:36, :36, 0], np.repeat(np.repeat(images[0, :18, :18, 0], 2, 0), 2, 1), atol=1 / 255)


def test_top_activations_returns_every_image_with_its_label():
  from deconv_jax import config as config_lib
  from deconv_jax import data

  source = data.get_source(config_lib.base().dataset, "validation")
  model = models.CNN(features=(4,), dense=(8,), num_classes=10)
  variables = model.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  images, labels, maxima = deconvnet.top_activations(model, variables, source, ["act1"], batch_size=128)
  assert images.shape == (500, 28, 28, 1) and maxima["act1"].shape == (500, 4)
  np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(500)])


@pytest.fixture
def trained(classifier_run):
  return classifier_run[0]


@pytest.mark.slow
def test_visualize_writes_the_figures(trained, cli):
  result = cli("deconv_jax.visualize", f"--workdir={trained}", "--num_channels=3", "--top_k=4", check=True)
  names = ["deconvnet_act1.png", "deconvnet_act2.png", "attribution_methods.png"]
  assert [os.path.basename(p) for p in result.stdout.splitlines()[:-1]] == names
  for name in names:
    pixels = matplotlib.image.imread(os.path.join(trained, name))[..., :3]
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.std() > 10 / 255  # drawn, not blank
  assert result.stdout.splitlines()[-1].startswith("wrote 3 figures in")


@pytest.mark.slow
def test_visualize_errors_are_one_line(trained, cli):
  cases = [
    (["--channels=99"], "error: --channels: channel 99 does not exist; the conv layers have (8, 16)"),
    (["--channels=a"], "error: --channels=a: expected comma-separated channel numbers"),
    (
      ["--config.model.dense=(64,)"],
      "error: visualize takes overrides of config.dataset.*, measure.* and eval_batch_size only",
    ),
    (["--top_k=0"], "error: flag --top_k=0: 0 is not a positive integer"),
  ]
  for args, message in cases:
    result = cli("deconv_jax.visualize", f"--workdir={trained}", *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith(message), (args, result.stderr)
    assert "Traceback" not in result.stderr
