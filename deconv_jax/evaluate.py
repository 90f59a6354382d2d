r"""Evaluates a run: ``python -m deconv_jax.evaluate --workdir DIR [--config.KEY=VALUE ...]``.

Loads the config saved in ``DIR`` and its latest checkpoint, and evaluates on the
config's ``dataset.eval_split`` — or on another dataset given by overrides, e.g. the
real MNIST test set::

  python -m deconv_jax.evaluate --workdir workdirs/quickstart \
    --config.dataset.source=idx --config.dataset.data_dir=../shared/data/mnist --config.dataset.eval_split=test

The last line printed is the metrics as one JSON object. This module is the command only; what it
runs is `eval_loop.evaluate_workdir`, which a notebook calls directly.
"""

from __future__ import annotations

import json
import sys

from absl import flags

from deconv_jax import cli, eval_loop


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  metrics = eval_loop.evaluate_workdir(flags.FLAGS.config, flags.FLAGS.workdir)
  print(json.dumps(metrics), flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.evaluate``, ``deconv-evaluate``)."""
  cli.run(main, lambda: cli.define_workdir_flags(sys.argv))


if __name__ == "__main__":
  run()
