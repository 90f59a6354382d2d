r"""Downloads and prepares the TFDS dataset a config reads, and nothing else:

  python -m deconv_jax.prepare --config configs/mnist_classifier.py --config.dataset.data_dir=/tmp/tensorflow_datasets

What `train` does first when its dataset is missing, on its own: for a machine with the internet that prepares a
dataset for machines without it, or for the bucket a pod's hosts share (copy the directory there). It prepares
even with ``config.dataset.download=false``, as that is what it is for, and needs the ``[prepare]`` extra. The
last line names what is where.
(TFDS's own ``tfds build`` needs Apache Beam as well, even for datasets that do not use it.)
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from deconv_jax import cli, data, tfds_prepare
from deconv_jax import config as config_lib


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}: use --config=FILE and --config.KEY=VALUE")
  config = flags.FLAGS.config
  if config is None:
    cli.die("--config=FILE is required: the config whose dataset to prepare (e.g. configs/mnist_classifier.py)")
  config_lib.validate(config)
  dataset = config.dataset
  if dataset.source != "tfds":
    cli.die(
      f"config.dataset.source={dataset.source!r}: only a TFDS dataset is downloaded and prepared ('embedded' comes "
      "with the package, 'idx' reads files already here); use --config.dataset.source=tfds"
    )
  dataset.download = True  # what this command is for
  tfds_prepare.prepare(dataset)
  builder = data.tfds_builder(dataset)
  print(f"{dataset.name} is prepared in {builder.data_dir} (splits: {', '.join(sorted(builder.info.splits))})")


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Config file whose dataset to prepare.", lock_config=True)


def run() -> None:
  """Console entry point (``python -m deconv_jax.prepare``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
