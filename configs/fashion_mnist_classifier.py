r"""The default CNN on TFDS Fashion-MNIST (28x28x1, 10 classes), with light augmentation and a cosine schedule.

Reads TFDS `fashion_mnist` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it
is missing, the run downloads and prepares it first (README, "Datasets").

  python -m deconv_jax.train --config configs/fashion_mnist_classifier.py --workdir workdirs/fashion_mnist
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.dataset.source = "tfds"
  c.dataset.name = "fashion_mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.model.padding = "SAME"
  c.batch_size = 128
  c.num_epochs = 15.0
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 200
  c.augment.max_shift = 2.0
  c.log_every_steps = 200
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
