r"""`configs/inversion.py` on the full TFDS MNIST: invert `configs/mnist_classifier.py`'s CNN at pool2, eval on test.

Reads TFDS `mnist` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it is
missing, the run downloads and prepares it first (README, "Datasets").
Train the classifier first, then the inversion:

  python -m deconv_jax.train --config configs/mnist_classifier.py --workdir workdirs/mnist_classifier
  python -m deconv_jax.train --config configs/inversion_tfds.py --workdir workdirs/inversion_tfds
"""

import os

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "inversion.py"))
  c.dataset.source = "tfds"
  c.dataset.name = "mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.inversion.classifier_workdir = "workdirs/mnist_classifier"
  c.num_epochs = 5.0
  c.log_every_steps = 500
  c.eval_every_steps = 1875  # one epoch
  c.checkpoint_every_steps = 1875
  return c
