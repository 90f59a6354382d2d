"""Which up-sampling makes better GAN images: ``python -m deconv_jax.experiments.upsampling`` (see its README.md)."""
