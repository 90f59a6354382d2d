r"""Class-conditional DCGAN on the embedded MNIST-5k: transposed-conv generator, 4x4 kernels, stride 2.

Radford et al.'s recipe (Adam 2e-4, beta1 0.5, batch norm in G, LeakyReLU in D, non-saturating
loss), sized for a 2-core CPU; G takes the class as a one-hot, D is a projection discriminator.
``--config.generator.conditional=False`` trains the unconditional GAN. Sample grids go to
``WORKDIR/samples/`` (one class per column); measure the result with the quickstart classifier
(``measure.classifier_workdir``; train it first with ``python -m deconv_jax.train``) against the real
MNIST test set, as the README's "Measured figures" do:

  python -m deconv_jax.train --config configs/gan.py --workdir workdirs/gan
  python -m deconv_jax.evaluate --workdir workdirs/gan \
    --config.measure.real_source=idx --config.measure.real_data_dir=../shared/data/mnist
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.task = "gan"
  c.batch_size = 64
  c.num_train_steps = 4000
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 2e-4
  c.optimizer.b1 = 0.5
  c.generator.latent_dim = 64
  c.generator.base_size = 7
  c.generator.base_features = 64
  c.generator.features = (32, 16)
  c.generator.upsample = "transpose"
  c.generator.kernel_size = 4
  c.generator.batch_norm = True
  c.generator.output_activation = "tanh"
  c.generator.conditional = True
  c.discriminator.features = (32, 64)
  c.discriminator.kernel_size = 4
  c.measure.classifier_workdir = "workdirs/quickstart"
  c.log_every_steps = 500
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  c.sample_every_steps = 1000
  return c
