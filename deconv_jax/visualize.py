r"""Deconvnet figures of a trained classifier: ``python -m deconv_jax.visualize --workdir DIR [--config.KEY=VALUE]``.

Loads the run's saved config and latest checkpoint and writes `deconvnet.visualize_workdir`'s figures into
``DIR``. Overrides of ``config.dataset.*`` pick another split to search, e.g. the real MNIST test set::

  python -m deconv_jax.visualize --workdir workdirs/quickstart \
    --config.dataset.source=idx --config.dataset.data_dir=../shared/data/mnist --config.dataset.eval_split=test
"""

from __future__ import annotations

import sys
import time

from absl import flags

from deconv_jax import cli, deconvnet


def define_flags(argv: list[str]) -> None:
  cli.define_workdir_flags(argv)
  flags.DEFINE_list("channels", [], "Channels to show in every layer (default: the num_channels most active).")
  flags.DEFINE_integer("num_channels", 8, "Channels per layer when --channels is not given.", lower_bound=1)
  flags.DEFINE_integer("top_k", 9, "Images per channel: the ones that excite it most.", lower_bound=1)
  flags.DEFINE_integer("num_images", 6, "Images in the saliency / deconvnet / guided backprop panel.", lower_bound=1)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}")
  FLAGS = flags.FLAGS
  try:
    channels = [int(c) for c in FLAGS.channels]
  except ValueError:
    cli.die(f"--channels={','.join(FLAGS.channels)}: expected comma-separated channel numbers")
  start = time.time()
  paths = deconvnet.visualize_workdir(
    FLAGS.config,
    FLAGS.workdir,
    channels=channels,
    num_channels=FLAGS.num_channels,
    top_k=FLAGS.top_k,
    num_images=FLAGS.num_images,
  )
  for path in paths:
    print(path)
  print(f"wrote {len(paths)} figures in {time.time() - start:.1f} s", flush=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.visualize``, ``deconv-visualize``)."""
  cli.run(main, lambda: define_flags(sys.argv))


if __name__ == "__main__":
  run()
