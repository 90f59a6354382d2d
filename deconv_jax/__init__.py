"""deconv_jax: a transposed convolution is the adjoint of a convolution, and in JAX the adjoint is ``jax.vjp``."""

__version__ = "0.1.0"
