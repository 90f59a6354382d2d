r"""The CNN on TFDS CIFAR-10 (32x32x3): SAME padding keeps 4x4 maps after three pools; shifts as augmentation.

Reads TFDS `cifar10` (array_record) from --config.dataset.data_dir (TFDS's default if empty); where it
is missing, the run downloads and prepares it first (README, "Datasets").

  python -m deconv_jax.train --config configs/cifar10_classifier.py --workdir workdirs/cifar10
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.dataset.source = "tfds"
  c.dataset.name = "cifar10"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.model.padding = "SAME"
  c.model.features = (64, 128, 256)
  c.batch_size = 128
  c.num_epochs = 30.0
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 5e-4
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 500
  c.augment.max_shift = 4.0
  c.log_every_steps = 200
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
