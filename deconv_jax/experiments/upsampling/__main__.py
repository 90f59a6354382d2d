"""``python -m deconv_jax.experiments.upsampling``: see `study`."""

from deconv_jax.experiments.upsampling import study

study.run()
