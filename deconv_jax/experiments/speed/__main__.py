"""``python -m deconv_jax.experiments.speed``: see `benchmark`."""

from deconv_jax.experiments.speed import benchmark

benchmark.run()
