"""How fast the train steps and primitives run: ``python -m deconv_jax.experiments.speed`` (see its README.md)."""
