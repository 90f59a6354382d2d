r"""The original Keras MNIST settings on the full TFDS MNIST: batch 32, 10 epochs, Adam 1e-3.

Reads TFDS `mnist` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it is
missing, the run downloads and prepares it first (README, "Datasets").

  python -m deconv_jax.train --config configs/mnist_classifier.py --workdir workdirs/mnist_classifier
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.dataset.source = "tfds"
  c.dataset.name = "mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.batch_size = 32
  c.num_epochs = 10.0
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 500
  c.eval_every_steps = 1875  # one epoch
  c.checkpoint_every_steps = 1875
  return c
