r"""`configs/autoencoder.py` (tied convolutional autoencoder) on the full TFDS MNIST: 60k train, eval on the 10k test.

Reads TFDS `mnist` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it is
missing, the run downloads and prepares it first (README, "Datasets").

  python -m deconv_jax.train --config configs/autoencoder_tfds.py --workdir workdirs/autoencoder_tfds
"""

import os

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "autoencoder.py"))
  c.dataset.source = "tfds"
  c.dataset.name = "mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.log_every_steps = 500
  c.eval_every_steps = 1875  # one epoch
  c.checkpoint_every_steps = 1875
  return c
