r"""A convolutional autoencoder whose decoder is the encoder's adjoint (tied), on the embedded MNIST-5k.

Encoder: Conv32-Conv64 (4x4, stride 2, SAME; 28 -> 14 -> 7) and a linear Dense bottleneck of 32.
Tied, the decoder owns biases only: its Dense is the bottleneck kernel transposed and its layers are
``ops.deconv2d`` (the VJP of the conv) with the encoder's kernels; sigmoid output, mean squared
error, about 5 epochs (704 steps); its PSNR and SSIM on the 500 validation digits are in the README,
"Measured figures". ``--config.autoencoder.latent_dim=0`` drops the bottleneck (the code is then 7x7x64,
larger than the image: 31.2 dB). ``--config.autoencoder.tied=False`` gives the decoder its own
transposed-conv kernels: 29.3 dB without the bottleneck; with it, the run measured here got stuck early at
an all-black image (sigmoid saturated, MSE 0.116).

  python -m deconv_jax.train --config configs/autoencoder.py --workdir workdirs/autoencoder
"""

from deconv_jax import config as config_lib


def get_config():
  c = config_lib.base()
  c.task = "autoencoder"
  c.autoencoder.features = (32, 64)
  c.autoencoder.kernel_size = 4
  c.autoencoder.tied = True
  c.autoencoder.latent_dim = 32
  c.batch_size = 32
  c.num_epochs = 5.0
  c.optimizer.learning_rate = 1e-3
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  return c
