r"""Inverting a trained classifier (Dosovitskiy & Brox, 2016): reconstruct MNIST digits from the quickstart CNN's pool2.

A transposed-conv generator (``config.generator``: Dense to 7x7x128, Deconv64-Deconv32, stride 2,
batch norm, tanh) learns to map the frozen classifier's ``pool2`` features (5x5x64, flattened) back
to the 28x28 image, by mean squared error. Any layer of the classifier can be inverted:
``--config.inversion.layer=act1`` ... ``hidden1``, ``logits``. Eval reports the MSE, PSNR and SSIM of
the validation reconstructions (the README's "Measured figures" has them for 10 epochs from pool2). Train
the classifier first, then the inversion:

  python -m deconv_jax.train --config configs/quickstart.py --workdir workdirs/quickstart
  python -m deconv_jax.train --config configs/inversion.py --workdir workdirs/inversion
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.task = "inversion"
  c.inversion.classifier_workdir = "workdirs/quickstart"
  c.inversion.layer = "pool2"
  c.generator.base_size = 7
  c.generator.base_features = 128
  c.generator.features = (64, 32)
  c.generator.upsample = "transpose"
  c.generator.kernel_size = 4
  c.generator.batch_norm = True
  c.generator.output_activation = "tanh"
  c.batch_size = 32
  c.num_epochs = 10.0
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 200
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  return c
