r"""The defaults: the classic Keras MNIST CNN on the embedded MNIST-5k, Adam 1e-3, batch 32, 10 epochs.

python -m deconv_jax.train --config configs/default.py --workdir workdirs/default
"""

from deconv_jax import config as config_lib


def get_config():
  return config_lib.base()
