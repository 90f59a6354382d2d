r"""Which up-sampling makes better images? ``python -m deconv_jax.sweep --config configs/gan.py --workdir DIR``.

Trains the config's GAN once per up-sampling variant, with the same budget, seed and
data, measures each (FID, classifier score, checkerboard score on ``measure.num_samples``
generated images, with the classifier run in ``measure.classifier_workdir``), and writes

* ``DIR/results.md``: one markdown table, a row per variant, plus the untrained
  generator and real data (training images vs the real set) as reference rows;
* ``DIR/samples.png``: the same 16 latents through every variant, side by side.

Each variant's run is ``DIR/<variant>``; running the command again resumes or reuses them.
``--config.KEY=VALUE`` overrides apply to every variant, e.g. a shorter budget
``--config.num_train_steps=2000``, or the real MNIST test set as the reference:
``--config.measure.real_source=idx --config.measure.real_data_dir=../shared/data/mnist``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags
from PIL import Image, ImageDraw

# A driver, like a notebook: it runs `train` in-process, one variant after another.
from deconv_jax import cli, data, measure, tasks, train
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.metric_writers import image_grid

# name -> generator overrides. Kernel 4 overlaps evenly with stride 2; 3 and 5 do not (Odena et al. 2016).
VARIANTS: dict[str, dict[str, Any]] = {
  "transpose_k4": {"upsample": "transpose", "kernel_size": 4},
  "transpose_k3": {"upsample": "transpose", "kernel_size": 3},
  "transpose_k5": {"upsample": "transpose", "kernel_size": 5},
  "resize_conv_nearest_k3": {"upsample": "resize_conv", "resize_method": "nearest", "kernel_size": 3},
  "resize_conv_bilinear_k3": {"upsample": "resize_conv", "resize_method": "bilinear", "kernel_size": 3},
  "subpixel_k3": {"upsample": "subpixel", "kernel_size": 3},
}
NUM_SHOWN = 16
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "gan.py")


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict())
  for key, value in VARIANTS[name].items():
    c.generator[key] = value
  return c


def _row(name: str, m: dict[str, float], seconds: float | None) -> str:
  t = "" if seconds is None else f"{seconds:.0f}"
  return f"| {name} | {m['fid']:.1f} | {m['classifier_score']:.2f} | {m['checkerboard_score']:.2f} | {t} |"


def sweep(config: ml_collections.ConfigDict, workdir: str, variants: list[str]) -> str:
  """Trains and measures every variant; returns the markdown table (also written to ``workdir/results.md``)."""
  config_lib.validate(config)
  if config.task != "gan":
    raise config_lib.ConfigError(f"the sweep trains GANs; config.task is {config.task!r}")
  featurizer = measure.Featurizer(config.measure.classifier_workdir)
  real = measure.real_images(config)
  task = tasks.get("gan")
  os.makedirs(workdir, exist_ok=True)
  rows, shown, results = [], [], {}

  # The untrained generator (the first variant at step 0) and real data bracket the table.
  untrained_cfg = variant_config(config, variants[0])
  info = data.get_info(config.dataset, config.dataset.train_split)
  state = task.create_state(untrained_cfg, jax.random.split(jax.random.key(config.seed))[0], info, 1)
  generated = task.generate_many(state, config.measure.num_samples)
  results["untrained"] = measure.generated_quality(generated, real, featurizer)
  rows.append(_row(f"untrained ({variants[0]}, step 0)", results["untrained"], None))
  train_images = measure.all_images(config.dataset, config.dataset.train_split)
  results["real"] = measure.reference_quality(train_images, real, featurizer)
  reference_row = _row(f"real: {len(train_images)} training images", results["real"], None)

  for name in variants:
    run_dir = os.path.join(workdir, name)
    cfg = variant_config(config, name)
    start = time.time()
    train.train_and_evaluate(cfg, run_dir)
    seconds = _train_seconds(run_dir, time.time() - start)
    state = workdir_lib.restore(cfg, run_dir, task, command="sweep").state
    generated = task.generate_many(state, config.measure.num_samples)
    results[name] = {**measure.generated_quality(generated, real, featurizer), "train_seconds": seconds}
    rows.append(_row(name, results[name], seconds))
    shown.append((name, np.asarray(task.generate(state, task.sample_latents(state, NUM_SHOWN)))))
    print(rows[-1], flush=True)

  n_gen, n_real = config.measure.num_samples, len(real)
  table = "\n".join(
    [
      f"{config.num_train_steps} steps of {config.batch_size}, seed {config.seed}; FID and classifier score on the "
      f"penultimate features / logits of the classifier in {config.measure.classifier_workdir}, {n_gen} generated vs "
      f"{n_real} real images; checkerboard score = alias-frequency power share relative to the real images.",
      "",
      "| variant | FID | classifier score | checkerboard score | training loop (s) |",
      "| --- | --- | --- | --- | --- |",
      *rows,
      reference_row,
    ]
  )
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  samples_figure(shown).save(os.path.join(workdir, "samples.png"))
  return table


def _train_seconds(run_dir: str, fallback: float) -> float:
  """Seconds of training recorded in the run's metrics (steps / steps_per_sec summed), else wall time."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return fallback
  seconds, last_step = 0.0, 0
  with open(path) as f:
    for line in f:
      record = json.loads(line)
      if record.get("split") == "train" and record.get("steps_per_sec"):
        seconds += (record["step"] - last_step) / record["steps_per_sec"]
        last_step = record["step"]
  return seconds or fallback


def samples_figure(shown: list[tuple[str, np.ndarray]], zoom: int = 2) -> Image.Image:
  """Each variant's samples (a 4x4 grid, same latents everywhere) side by side under its name."""
  grids = [(name, image_grid(images, cols=4)) for name, images in shown]
  h, w = grids[0][1].shape[:2]
  label_h, gap = 14, 12
  canvas = Image.new("RGB", (len(grids) * (w * zoom + gap) + gap, h * zoom + label_h + 2 * gap), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (name, grid) in enumerate(grids):
    x = gap + i * (w * zoom + gap)
    draw.text((x, gap // 2), name, fill="black")
    canvas.paste(Image.fromarray(grid).resize((w * zoom, h * zoom), Image.NEAREST), (x, gap // 2 + label_h))
  return canvas


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "The GAN config every variant starts from.")
  flags.DEFINE_string("workdir", "workdirs/upsampling", "Directory for the variants' runs and the results.")
  flags.DEFINE_list("variants", list(VARIANTS), f"Variants to train, of {list(VARIANTS)}.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  unknown = [v for v in FLAGS.variants if v not in VARIANTS]
  if unknown or not FLAGS.variants:
    cli.die(f"--variants={','.join(FLAGS.variants)}: allowed variants are {', '.join(VARIANTS)}")
  print(sweep(FLAGS.config, FLAGS.workdir, FLAGS.variants), flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.sweep``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
