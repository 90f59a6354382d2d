r"""Quickstart: the default CNN on the embedded MNIST-5k (4,500 train / 500 validation), no network needed.

The network is the classic one (Conv32-Pool-Conv64-Pool-Conv128-Pool-Dense512-Dense10);
with only 4,500 training digits, random affine augmentation and a cosine learning
rate raise its accuracy on the real MNIST test set (10,000 images) well above that of
``configs/default.py`` (the original's settings); the figures are in the README, "Measured figures":

  python -m deconv_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
  python -m deconv_jax.evaluate --workdir workdirs/quickstart \
    --config.dataset.source=idx --config.dataset.data_dir=../shared/data/mnist --config.dataset.eval_split=test
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.batch_size = 32
  c.num_epochs = 20.0
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "warmup_cosine"
  c.optimizer.warmup_steps = 100
  c.augment.max_shift = 2.0
  c.augment.max_rotation = 10.0
  c.augment.max_scale = 0.1
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c
