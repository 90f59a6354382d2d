r"""Which up-sampling makes better images, by more than seed-to-seed noise?

``python -m deconv_jax.experiments.upsampling --config configs/gan.py --workdir DIR [--seeds=N] [--variants=a,b,...]``

Trains the config's GAN once per up-sampling variant and seed, with the same budget and data,
measures each run (FID, classifier score, checkerboard score of ``measure.num_samples`` generated
images, with the classifier run in ``measure.classifier_workdir``, against every image of the real
set ``measure.real_*``), and writes

* ``DIR/results.md``: a row per variant with each metric's mean ± standard deviation over the seeds
  and the training time; reference rows (the untrained generator; real data: the training digits,
  and two disjoint halves of the real set, split once per seed); a table of the differences the
  study compares (`variants.comparisons`), each with a paired t-test over the seeds; and the checkerboard
  score's check (`checkerboard_check`);
* ``DIR/results.json``: the same numbers, with every per-seed value;
* ``DIR/samples.png``: the same 16 latents through every variant (the first seed), side by side;
* ``DIR/spectrum.png``: the mean power spectrum of each variant's images and of the real set, its
  ratio to the real set's, and a zoomed crop of one sample per variant (`study_figures.spectrum_figure`).

``--seeds=N`` (default 1) trains every variant with each of the seeds ``config.seed``, ...,
``config.seed + N - 1``. The seed keys the initial parameters, the order of the training data and the
training latents; the measured latents are the same for every run, so the runs of two variants with
the same seed form a pair. Standard deviations are sample ones (ddof = 1).

Run (variant, seed) is ``DIR/<variant>/seed_<seed>``; running the command again resumes or reuses
finished runs, so a larger ``--seeds`` trains only the new seeds. ``--config.KEY=VALUE`` overrides
apply to every run, e.g. a shorter budget ``--config.num_train_steps=2000``, or the real MNIST test set as the
reference: ``--config.measure.real_source=idx --config.measure.real_data_dir=../shared/data/mnist``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

# A driver, like a notebook: it runs `train` in-process, one run after another.
from deconv_jax import cli, data, figures, measure, metric_writers, quality, storage, tasks, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.experiments.upsampling import checkerboard_check, report, stats
from deconv_jax.experiments.upsampling import figures as study_figures
from deconv_jax.experiments.upsampling.variants import VARIANTS, comparisons, init_state, variant_config

NUM_SHOWN = 16
SHOWN_INDEX = 8  # the measured sample whose crop spectrum.png shows (class 8 for a conditional GAN)
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "configs", "gan.py")


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
  return storage.join(workdir, name, f"seed_{seed}")


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
  storage.check_reachable(workdir, "--workdir")
  storage.makedirs(workdir)
  keys = list(report.METRICS)
  summaries = lambda found, names: {k: stats.summarize([f[k] for f in found]) for k in names}

  # ---- reference rows: the untrained generator (the first variant at step 0); real data.
  untrained = []
  for seed in seeds:
    state = init_state(variant_config(config, variants[0], seed), task, info)
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
    {"a": a, "b": b, "metric": k, **stats.paired_comparison(*(results["variants"][v][k]["values"] for v in (a, b)))}
    for a, b in comparisons(variants)
    for k in keys
  ]

  # ---- the checkerboard score on generators and images whose artifacts are known.
  results["checkerboard_check"] = {
    "num_images": checkerboard_check.NUM_CHECKED,
    "init": checkerboard_check.init_checkerboard(config, variants, seeds, real),
    "amplitudes": list(checkerboard_check.AMPLITUDES),
    "patterns": checkerboard_check.pattern_scores(real),
  }

  table = report.results_markdown(results)
  storage.write_text(storage.join(workdir, "results.md"), table + "\n")
  storage.write_text(storage.join(workdir, "results.json"), json.dumps(results, indent=2))
  figures.save(study_figures.samples_figure(shown, seeds[0]), storage.join(workdir, "samples.png"))
  scores = {"real set": f"{len(real)} images"}
  for v in variants:
    score = results["variants"][v]["checkerboard_score"]
    scores[v] = f"checkerboard {stats.mean_std(score, 0 if score['mean'] >= 100 else 2)}"
  counts = f"{n} images per run" + (f", averaged over {len(seeds)} seeds" if len(seeds) > 1 else "")
  figures.save(study_figures.spectrum_figure(spectra, crops, scores, counts), storage.join(workdir, "spectrum.png"))
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


def _train_seconds(path: str, fallback: float) -> float:
  """Seconds of training recorded in the run's metrics (steps / steps_per_sec summed), else wall time."""
  metrics = workdir_lib.RunDir(path).metrics
  if not storage.exists(metrics):
    return fallback
  seconds, last_step = 0.0, 0
  for record in metric_writers.read_records(metrics)[0]:  # a torn last line (a killed run) is not a record
    if record.get("split") == "train" and record.get("steps_per_sec"):
      seconds += (record["step"] - last_step) / record["steps_per_sec"]
      last_step = record["step"]
  return seconds or fallback


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
  """Console entry point (``python -m deconv_jax.experiments.upsampling``)."""
  cli.run(main, define_flags)
