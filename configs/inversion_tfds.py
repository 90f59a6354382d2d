r"""`configs/inversion.py` on the full TFDS MNIST: invert `configs/mnist_classifier.py`'s CNN at pool2, eval on test.

Needs TFDS `mnist` prepared in array_record format (`tfds build mnist --file_format=array_record`
on a machine with internet; then pass its directory as --config.dataset.data_dir if not the default).
Train the classifier first, then the inversion:

  python -m deconv_jax.train --config configs/mnist_classifier.py --workdir workdirs/mnist_classifier
  python -m deconv_jax.train --config configs/inversion_tfds.py --workdir workdirs/inversion_tfds
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.task = "inversion"
  c.dataset.source = "tfds"
  c.dataset.name = "mnist"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.inversion.classifier_workdir = "workdirs/mnist_classifier"
  c.inversion.layer = "pool2"
  c.generator.base_size = 7
  c.generator.base_features = 128
  c.generator.features = (64, 32)
  c.generator.upsample = "transpose"
  c.generator.kernel_size = 4
  c.generator.batch_norm = True
  c.generator.output_activation = "tanh"
  c.batch_size = 32
  c.num_epochs = 5.0
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 500
  c.eval_every_steps = 1875  # one epoch
  c.checkpoint_every_steps = 1875
  return c
