r"""Which up-sampling makes better images, by more than seed-to-seed noise? ``python -m deconv_jax.sweep``.

``python -m deconv_jax.sweep --config configs/gan.py --workdir DIR [--seeds=N] [--variants=a,b,...]``

Trains the config's GAN once per up-sampling variant and seed, with the same budget and data,
measures each run (FID, classifier score, checkerboard score of ``measure.num_samples`` generated
images, with the classifier run in ``measure.classifier_workdir``, against every image of the real
set ``measure.real_*``), and writes

* ``DIR/results.md``: a row per variant with each metric's mean ± standard deviation over the seeds
  and the training time; reference rows (the untrained generator; real data: the training digits,
  and two disjoint halves of the real set, split once per seed); a table of the differences the
  README discusses, each with a paired t-test over the seeds; and the checkerboard score's check
  (`init_checkerboard`, `pattern_scores`);
* ``DIR/results.json``: the same numbers, with every per-seed value;
* ``DIR/samples.png``: the same 16 latents through every variant (the first seed), side by side;
* ``DIR/spectrum.png``: the mean power spectrum of each variant's images and of the real set, its
  ratio to the real set's, and a zoomed crop of one sample per variant (`spectrum_figure`).

``--seeds=N`` (default 1) trains every variant with each of the seeds ``config.seed``, ...,
``config.seed + N - 1``. The seed keys the initial parameters, the order of the training data and the
training latents; the measured latents are the same for every run, so the runs of two variants with
the same seed form a pair. Standard deviations are sample ones (ddof = 1).

Run (variant, seed) is ``DIR/<variant>/seed_<seed>``; running the command again resumes or reuses
finished runs, so a larger ``--seeds`` trains only the new seeds. A run of the earlier single-seed
layout (``DIR/<variant>`` itself holding the run) is moved to ``DIR/<variant>/seed_<its seed>`` and
reused. ``--config.KEY=VALUE`` overrides apply to every run, e.g. a shorter budget
``--config.num_train_steps=2000``, or the real MNIST test set as the reference:
``--config.measure.real_source=idx --config.measure.real_data_dir=../shared/data/mnist``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image
from scipy import stats

# A driver, like a notebook: it runs `train` in-process, one run after another.
from deconv_jax import cli, data, figures, measure, quality, tasks, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib

# name -> generator overrides. Kernel 4 overlaps evenly with stride 2; 3 and 5 do not (Odena et al. 2016).
VARIANTS: dict[str, dict[str, Any]] = {
  "transpose_k4": {"upsample": "transpose", "kernel_size": 4},
  "transpose_k3": {"upsample": "transpose", "kernel_size": 3},
  "transpose_k5": {"upsample": "transpose", "kernel_size": 5},
  "resize_conv_nearest_k3": {"upsample": "resize_conv", "resize_method": "nearest", "kernel_size": 3},
  "resize_conv_bilinear_k3": {"upsample": "resize_conv", "resize_method": "bilinear", "kernel_size": 3},
  "subpixel_k3": {"upsample": "subpixel", "kernel_size": 3},
}
BASELINE = "transpose_k4"  # the variant every other one is compared with
METRICS = {
  "fid": ("FID", 1),
  "classifier_score": ("classifier score", 2),
  "checkerboard_score": ("checkerboard score", 2),
}
ALPHA = 0.05  # a difference "exceeds spread" when its paired t-test gives p < ALPHA
AMPLITUDES = (0.0, 0.01, 0.03, 0.1, 0.3)  # of the stride-2 patterns added to real digits
NUM_CHECKED = 500  # images per generator in the checkerboard check
NUM_SHOWN = 16
SHOWN_INDEX = 8  # the measured sample whose crop spectrum.png shows (class 8 for a conditional GAN)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "gan.py")


def variant_config(config: ml_collections.ConfigDict, name: str, seed: int | None = None) -> ml_collections.ConfigDict:
  """``config`` with variant ``name``'s generator settings, and ``seed`` (default: the config's)."""
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in VARIANTS[name].items():
    c.generator[key] = value
  if seed is not None:
    c.seed = seed
  return c


def seeds_of(config: ml_collections.ConfigDict, num_seeds: Any) -> list[int]:
  """``[config.seed, ..., config.seed + num_seeds - 1]``; a ConfigError naming ``--seeds`` unless an int >= 1."""
  if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
    raise config_lib.ConfigError(
      f"--seeds={num_seeds} is not allowed: the number of seeds per variant, an integer >= 1 "
      f"(seeds config.seed, ..., config.seed + N - 1)"
    )
  return [config.seed + k for k in range(num_seeds)]


def run_dir(workdir: str, name: str, seed: int) -> str:
  """The run of variant ``name`` with ``seed``: ``workdir/<name>/seed_<seed>``."""
  return os.path.join(workdir, name, f"seed_{seed}")


# ---------------------------------------------------------------- statistics over seeds


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


def comparisons(variants: Sequence[str]) -> list[tuple[str, str]]:
  """The pairs ``(a, b)`` the README compares, of those in ``variants``: each variant against `BASELINE` (kernel 4),
  and nearest resize-conv against kernel 3."""
  pairs = [(v, BASELINE) for v in VARIANTS if v != BASELINE] + [("resize_conv_nearest_k3", "transpose_k3")]
  return [(a, b) for a, b in pairs if a in variants and b in variants]


def mean_std(summary: dict[str, Any], digits: int) -> str:
  """``"10.4 ± 0.5"``; the mean alone when there is no spread (one seed)."""
  if summary["std"] is None:
    return f"{summary['mean']:.{digits}f}"
  return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


# ---------------------------------------------------------------- the checkerboard score's check


def period_two_patterns(h: int, w: int) -> dict[str, np.ndarray]:
  """The stride-2 patterns ``[h, w]`` whose power lies at the alias frequencies only: checkerboard and stripes."""
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return {"(-1)^(i+j)": (-1.0) ** (i + j), "(-1)^i": (-1.0) ** i}


def pattern_scores(real_NHWC: np.ndarray, amplitudes: Sequence[float] = AMPLITUDES) -> dict[str, list[float]]:
  """Checkerboard score of ``real + a * pattern`` (not clipped) against ``real`` itself, per pattern and amplitude.

  1 at ``a = 0``; the pattern adds ``a^2`` times its power at the alias points and nothing elsewhere, so a
  score that measures stride-2 artifacts rises with ``a``.
  """
  _, h, w, _ = real_NHWC.shape
  return {
    name: [quality.checkerboard_score(real_NHWC + a * pattern[None, :, :, None], real_NHWC) for a in amplitudes]
    for name, pattern in period_two_patterns(h, w).items()
  }


def equal_weights(generator_params: Any, transpose: bool) -> Any:
  """The generator's parameters with every kernel of its up-sampling blocks and output layer set to one value,
  ``1 / (kernel height * width * input channels)``: what is left is how the kernel overlaps itself.

  The latent projection (``"project"``) keeps its random weights, so the images still vary. A `models.Deconv`
  kernel is its forward conv's ``[kh, kw, out, in]``: it sums over its last axis (``transpose=True``), a
  `models.Conv` kernel over its third.
  """

  def equal(path: tuple[Any, ...], x: jax.Array) -> jax.Array:
    if path[0].key == "project" or path[-1].key != "kernel":
      return x
    kh, kw = x.shape[:2]
    return jnp.full_like(x, 1.0 / (kh * kw * x.shape[3 if transpose else 2]))

  return jax.tree_util.tree_map_with_path(equal, generator_params)


def _init_state(config: ml_collections.ConfigDict, task: Any, info: data.DatasetInfo) -> Any:
  """The train state a run of ``config`` starts from (`train` splits the same key)."""
  return task.create_state(config, jax.random.split(jax.random.key(config.seed))[0], info, 1)


def init_checkerboard(
  config: ml_collections.ConfigDict,
  variants: Sequence[str],
  seeds: Sequence[int],
  real_NHWC: np.ndarray,
  num_images: int = NUM_CHECKED,
) -> dict[str, dict[str, dict[str, Any]]]:
  """Checkerboard score against ``real_NHWC`` of each variant's generator at initialization, over ``seeds``.

  ``{variant: {"random": summary, "equal": summary}}`` (`summarize`): its initial random weights, and
  `equal_weights`, with which kernels 3 and 5 (uneven overlap with stride 2) must score far above kernel 4
  and resize-conv. ``num_images`` images per generator.
  """
  task = tasks.get("gan")
  info = data.get_info(config.dataset, config.dataset.train_split)
  found: dict[str, dict[str, list[float]]] = {}
  for name in variants:
    found[name] = {"random": [], "equal": []}
    for seed in seeds:
      cfg = variant_config(config, name, seed)
      state = _init_state(cfg, task, info)
      equal = equal_weights(state.params["generator"], cfg.generator.upsample == "transpose")
      for kind, s in (("random", state), ("equal", state.replace(params={**state.params, "generator": equal}))):
        found[name][kind].append(quality.checkerboard_score(task.generate_many(s, num_images), real_NHWC))
  return {name: {kind: summarize(v) for kind, v in kinds.items()} for name, kinds in found.items()}


# ---------------------------------------------------------------- the sweep


def sweep(config: ml_collections.ConfigDict, workdir: str, variants: list[str], num_seeds: int = 1) -> str:
  """Trains and measures every variant with every seed; returns ``workdir/results.md``'s text, and writes the
  files the module docstring lists."""
  config_lib.validate(config)
  if config.task != "gan":
    raise config_lib.ConfigError(f"the sweep trains GANs; config.task is {config.task!r}")
  seeds = seeds_of(config, num_seeds)
  featurizer = measure.Featurizer(config.measure.classifier_workdir)
  real = measure.real_images(config)
  task = tasks.get("gan")
  info = data.get_info(config.dataset, config.dataset.train_split)
  n = config.measure.num_samples
  os.makedirs(workdir, exist_ok=True)
  keys = list(METRICS)
  summaries = lambda found, names: {k: summarize([f[k] for f in found]) for k in names}

  # ---- reference rows: the untrained generator (the first variant at step 0); real data.
  untrained = []
  for seed in seeds:
    state = _init_state(variant_config(config, variants[0], seed), task, info)
    untrained.append(measure.generated_quality(task.generate_many(state, n), real, featurizer))
  train_images = measure.all_images(config.dataset, config.dataset.train_split)
  real_train = measure.generated_quality(train_images, real, featurizer)
  halves = [measure.generated_quality(*real_halves(real, s), featurizer) for s in seeds]
  results: dict[str, Any] = {
    "seeds": seeds,
    "num_train_steps": config.num_train_steps,
    "batch_size": config.batch_size,
    "num_generated": n,
    "num_real": len(real),
    "real_set": _real_set_name(config),
    "classifier_workdir": config.measure.classifier_workdir,
    "untrained": {"variant": variants[0], **summaries(untrained, keys)},
    "real_train": {"num_images": len(train_images), **{k: real_train[k] for k in keys}},
    "real_halves": {"num_images": len(real) // 2, **summaries(halves, keys)},
    "real_classifier_score": quality.classifier_score(featurizer(real)[1]),
    "variants": {},
  }

  # ---- every variant, every seed.
  spectra, crops, shown = {"real set": quality.power_spectrum(real)}, {"real set": real[SHOWN_INDEX]}, []
  for name in variants:
    _move_single_seed_run(os.path.join(workdir, name))
    runs, spectrum = [], 0.0
    for seed in seeds:
      path, cfg = run_dir(workdir, name, seed), variant_config(config, name, seed)
      start = time.time()
      train.train_and_evaluate(cfg, path)
      seconds = _train_seconds(path, time.time() - start)
      state = workdir_lib.restore(cfg, path, task, command="sweep").state
      generated = task.generate_many(state, n)
      runs.append({**measure.generated_quality(generated, real, featurizer), "train_seconds": seconds})
      spectrum = spectrum + quality.power_spectrum(generated) / len(seeds)
      if seed == seeds[0]:
        crops[name] = generated[SHOWN_INDEX]
        shown.append((name, np.asarray(task.generate(state, task.sample_latents(state, NUM_SHOWN)))))
      r = runs[-1]
      print(
        f"{name} seed {seed}: FID {r['fid']:.1f}, classifier score {r['classifier_score']:.2f}, "
        f"checkerboard score {r['checkerboard_score']:.2f}, training loop {seconds:.0f} s",
        flush=True,
      )
    spectra[name] = spectrum
    results["variants"][name] = summaries(runs, [*keys, "train_seconds"])
  results["comparisons"] = [
    {"a": a, "b": b, "metric": k, **paired_comparison(*(results["variants"][v][k]["values"] for v in (a, b)))}
    for a, b in comparisons(variants)
    for k in keys
  ]

  # ---- the checkerboard score on generators and images whose artifacts are known.
  results["checkerboard_check"] = {
    "num_images": NUM_CHECKED,
    "init": init_checkerboard(config, variants, seeds, real),
    "amplitudes": list(AMPLITUDES),
    "patterns": pattern_scores(real),
  }

  table = results_markdown(results)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  samples_figure(shown, seeds[0]).save(os.path.join(workdir, "samples.png"))
  scores = {"real set": f"{len(real)} images"}
  for v in variants:
    score = results["variants"][v]["checkerboard_score"]
    scores[v] = f"checkerboard {mean_std(score, 0 if score['mean'] >= 100 else 2)}"
  spectrum_figure(
    spectra, crops, scores, f"{n} images per run" + (f", averaged over {len(seeds)} seeds" if len(seeds) > 1 else "")
  ).save(os.path.join(workdir, "spectrum.png"))
  return table


def real_halves(real_NHWC: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Two disjoint halves of the real set, ``N // 2`` images each, drawn at random with ``seed``."""
  order = np.random.default_rng(seed).permutation(len(real_NHWC))
  half = len(real_NHWC) // 2
  return real_NHWC[order[:half]], real_NHWC[order[half : 2 * half]]


def _real_set_name(config: ml_collections.ConfigDict) -> str:
  m = config.measure
  if m.real_source:
    return f"{m.real_source}:{m.real_split}" + (f" in {m.real_data_dir}" if m.real_data_dir else "")
  return f"{config.dataset.source}:{config.dataset.eval_split}"


def _move_single_seed_run(variant_dir: str) -> None:
  """A run of the single-seed layout (``variant_dir`` itself holds ``config.json``) moves to ``seed_<its seed>``.

  ``config.json`` moves last, so an interrupted move is finished by the next call. The variant directory is
  locked meanwhile (`workdir.Lock`): a run still training there stops it with a one-line error.
  """
  saved = workdir_lib.saved_config(variant_dir)
  if saved is None:
    return
  target = os.path.join(variant_dir, f"seed_{saved.seed}")
  if workdir_lib.saved_config(target) is not None:
    raise config_lib.ConfigError(
      f"{variant_dir} holds a run of seed {saved.seed} and so does {target}: remove one of them"
    )
  with workdir_lib.Lock(variant_dir):
    os.makedirs(target, exist_ok=True)
    moved = [
      e for e in sorted(os.listdir(variant_dir)) if e not in (".lock", "config.json") and not e.startswith("seed_")
    ]
    for entry in [*moved, "config.json"]:
      os.rename(os.path.join(variant_dir, entry), os.path.join(target, entry))
  print(f"moved the single-seed run in {variant_dir} to {target}", flush=True)


def _train_seconds(path: str, fallback: float) -> float:
  """Seconds of training recorded in the run's metrics (steps / steps_per_sec summed), else wall time."""
  metrics = os.path.join(path, "metrics.jsonl")
  if not os.path.exists(metrics):
    return fallback
  seconds, last_step = 0.0, 0
  with open(metrics) as f:
    for line in f:
      record = json.loads(line)
      if record.get("split") == "train" and record.get("steps_per_sec"):
        seconds += (record["step"] - last_step) / record["steps_per_sec"]
        last_step = record["step"]
  return seconds or fallback


# ---------------------------------------------------------------- results.md


def results_markdown(results: dict[str, Any]) -> str:
  """The tables of ``results`` (as `sweep` builds it): variants and reference rows, differences, the check."""
  seeds, k = results["seeds"], len(results["seeds"])
  cells = lambda found: " | ".join(mean_std(found[key], digits) for key, (_, digits) in METRICS.items())
  fixed = lambda found: " | ".join(f"{found[key]:.{digits}f}" for key, (_, digits) in METRICS.items())
  half = results["real_halves"]["num_images"]
  rows = [
    f"| untrained ({results['untrained']['variant']}, step 0) | {cells(results['untrained'])} |  |",
    *(f"| {name} | {cells(v)} | {mean_std(v['train_seconds'], 0)} |" for name, v in results["variants"].items()),
    f"| real: {results['real_train']['num_images']} training digits | {fixed(results['real_train'])} |  |",
    f"| real: two halves of the real set, {half} vs {half} | {cells(results['real_halves'])} |  |",
  ]
  seed_text = f"seed {seeds[0]}" if k == 1 else f"seeds {seeds[0]} to {seeds[-1]}"
  spread = "" if k == 1 else f" (mean ± sample standard deviation over the {k} seeds, ddof = 1)"
  lines = [
    f"{results['num_train_steps']} steps of {results['batch_size']} per run, {seed_text}{spread}. FID and classifier "
    f"score use the penultimate features / logits of the classifier in {results['classifier_workdir']}; "
    f"{results['num_generated']} generated images per run against all {results['num_real']} images of the real set "
    f"({results['real_set']}). Checkerboard score = share of power at the stride-2 alias frequencies, relative to "
    "the real set's. Training loop: seconds per run, from its metrics.jsonl.",
    "",
    "| variant | FID | classifier score | checkerboard score | training loop (s) |",
    "| --- | --- | --- | --- | --- |",
    *rows,
    "",
    f"Reference rows. Untrained: the {results['untrained']['variant']} generator at its initial parameters, per seed. "
    f"Training digits: all {results['real_train']['num_images']} of them measured as if generated (FID to the real "
    "set, their classifier score and checkerboard score). Two halves: the real set split at random into two "
    f"disjoint halves, once per seed, one half measured against the other; its counts ({half} vs {half}) differ "
    f"from the generated rows' ({results['num_generated']} vs {results['num_real']}), and FID's bias depends on them. "
    f"The classifier score of the whole real set is {results['real_classifier_score']:.2f}.",
    "",
    *_comparisons_markdown(results["comparisons"], k),
    "",
    *_check_markdown(results["checkerboard_check"]),
  ]
  return "\n".join(lines)


def _comparisons_markdown(found: list[dict[str, Any]], num_seeds: int) -> list[str]:
  if not found:
    return ["No pair of the variants swept is compared in the README."]
  chance = (
    f" Of {len(found)} tests, about {len(found) * ALPHA:.1f} would exceed by chance alone if no variant differed."
  )
  rows = []
  for c in found:
    digits = METRICS[c["metric"]][1]
    t = "n/a" if c["t"] is None else f"{c['t']:.2f} ({c['df']})"
    p = "n/a" if c["p"] is None else f"{c['p']:.3f}"
    name = METRICS[c["metric"]][0]
    rows.append(f"| {c['a']} vs {c['b']} | {name} | {c['difference']:+.{digits}f} | {t} | {p} | {c['verdict']} |")
  if num_seeds == 1:
    text = "Differences, from one seed: there is no seed-to-seed spread to test them against (--seeds=2 or more)."
  else:
    text = (
      f"Differences, paired by seed: a two-sided paired t-test over the {num_seeds} seeds (scipy.stats.ttest_rel on "
      "the per-seed values; seed s gives both variants the same data order, and the same latents are measured). "
      f'"exceeds spread" when p < {ALPHA}, else "within spread".{chance}'
    )
  return [
    text,
    "",
    "| a vs b | metric | mean of a − b | t (df) | p | verdict |",
    "| --- | --- | --- | --- | --- | --- |",
    *rows,
  ]


def _check_markdown(check: dict[str, Any]) -> list[str]:
  amplitudes = check["amplitudes"]
  init_rows = [f"| {v} | {mean_std(s['random'], 1)} | {mean_std(s['equal'], 2)} |" for v, s in check["init"].items()]
  pattern_rows = [f"| a · {p} | " + " | ".join(f"{x:.2f}" for x in xs) + " |" for p, xs in check["patterns"].items()]
  return [
    f"Checkerboard score check, where the artifacts are known ({check['num_images']} images per generator, against "
    "the real set). Generators at initialization, per seed: with their random initial weights, and with equal "
    "weights (every kernel of the up-sampling blocks and the output layer set to one value, the latent projection "
    "left random), so that only how a kernel overlaps itself shapes the image: with stride 2, kernels 3 and 5 "
    "overlap unevenly, kernel 4 evenly (Odena et al. 2016).",
    "",
    "| generator at initialization | random weights | equal weights |",
    "| --- | --- | --- |",
    *init_rows,
    "",
    "Real set plus a stride-2 pattern of amplitude a (not clipped), against the real set:",
    "",
    "| added | " + " | ".join(f"a = {a:g}" for a in amplitudes) + " |",
    "| --- |" + " --- |" * len(amplitudes),
    *pattern_rows,
  ]


# ---------------------------------------------------------------- figures


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


# ---------------------------------------------------------------- the command


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "The GAN config every variant starts from.")
  flags.DEFINE_string("workdir", "workdirs/upsampling", "Directory for the variants' runs and the results.")
  flags.DEFINE_list("variants", list(VARIANTS), f"Variants to train, of {list(VARIANTS)}.")
  flags.DEFINE_string("seeds", "1", "Seeds per variant, N: runs with config.seed, ..., config.seed + N - 1.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  unknown = [v for v in FLAGS.variants if v not in VARIANTS]
  if unknown or not FLAGS.variants or len(set(FLAGS.variants)) < len(FLAGS.variants):
    cli.die(f"--variants={','.join(FLAGS.variants)}: allowed variants, each at most once, are {', '.join(VARIANTS)}")
  try:
    num_seeds = int(FLAGS.seeds)
  except ValueError:
    num_seeds = FLAGS.seeds
  print(sweep(FLAGS.config, FLAGS.workdir, FLAGS.variants, num_seeds), flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.sweep``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
