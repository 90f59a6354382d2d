r"""DCGAN on the full TFDS MNIST (60,000 digits): `configs/gan.py`'s networks and recipe, 10 epochs.

Reads TFDS `mnist` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it is
missing, the run downloads and prepares it first (README, "Datasets").

  python -m deconv_jax.train --config configs/gan_tfds.py --workdir workdirs/gan_tfds
"""

import os

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "gan.py"))
  c.dataset.source = "tfds"
  c.dataset.name = "mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.num_train_steps = -1
  c.num_epochs = 10.0
  c.eval_every_steps = 5000
  c.checkpoint_every_steps = 5000
  c.sample_every_steps = 2000
  return c
