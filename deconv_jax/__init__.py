"""deconv_jax: a transposed convolution is the adjoint of a convolution, and in JAX the adjoint is ``jax.vjp``.

Array names and docstrings carry their shapes, channels last (``images_NHWC``, ``logits_NK``, kernels HWIO):

  N  examples: a batch, or any set of images          H, W  height and width (D: depth, in 3-D)
  C  channels (Cin, Cout of a conv)                     K     classes
  F  features per example (a layer, flattened)          Z     latent dimensions of a generator
"""

from absl import logging

__version__ = "0.1.0"

# grain, imported beside a jaxlib older than 0.11 (Colab's runtime has 0.7.2), logs that its multiprocess worker
# profiling needs a newer jaxlib. Nothing here profiles grain workers, and the line would come before every
# command's output, one-line errors included. (absl's own logger: a logging.getLogger("absl") made before absl
# is imported would take its place, and absl's records would lose the caller's path that other filters read.)
_GRAIN_PROFILING_WARNING = "Grain multiprocess worker profiling"
logging.get_absl_logger().addFilter(lambda record: not str(record.msg).startswith(_GRAIN_PROFILING_WARNING))
