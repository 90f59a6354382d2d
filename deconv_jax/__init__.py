"""deconv_jax: a transposed convolution is the adjoint of a convolution, and in JAX the adjoint is ``jax.vjp``."""

import logging

__version__ = "0.1.0"

# grain, imported beside a jaxlib older than 0.11 (Colab's runtime has 0.7.2), logs that its multiprocess worker
# profiling needs a newer jaxlib. Nothing here profiles grain workers, and the line would come before every
# command's output, one-line errors included.
logging.getLogger("absl").addFilter(
  lambda record: not str(record.msg).startswith("Grain multiprocess worker profiling")
)
