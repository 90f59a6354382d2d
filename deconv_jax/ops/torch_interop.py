"""PyTorch's ``ConvTranspose{1,2,3}d`` in this package's terms: its weight is the forward conv's kernel, transposed."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from deconv_jax.ops.shapes import DIMENSION_NUMBERS, IntOrPair, as_tuple, is_int


def from_torch_conv_transpose(
  weight: Any,
  *,
  stride: IntOrPair = 1,
  padding: IntOrPair = 0,
  output_padding: IntOrPair = 0,
  groups: int = 1,
  dilation: IntOrPair = 1,
) -> tuple[jax.Array, dict[str, Any]]:
  """A PyTorch transposed conv's weight and arguments -> our forward kernel and the keyword arguments of `deconv`.

  ``weight`` is ``torch.nn.ConvTranspose{1,2,3}d``'s ``[Cin, Cout // groups, *kernel_size]`` (a tensor or any
  array); the rest are its arguments, as the module stores them. That weight is the forward conv's ``[O, I, *k]``,
  so the kernel is its transpose ``[*kernel_size, Cout // groups, Cin]``. For channels-last ``y``::

      kernel, kw = from_torch_conv_transpose(m.weight, stride=m.stride, padding=m.padding,
                                             output_padding=m.output_padding, groups=m.groups, dilation=m.dilation)
      deconv(y, kernel, **kw) + m.bias  ==  m(y moved to channels-first), moved to channels-last

  and ``conv(x, kernel, **kw without output_padding)`` is the conv it is the adjoint of. `models.Deconv.from_torch`
  does this for a whole module.
  """
  if hasattr(weight, "detach"):  # a torch tensor (torch itself is not needed here)
    weight = weight.detach().cpu().numpy()
  weight = jnp.asarray(weight)
  n = weight.ndim - 2
  if n not in DIMENSION_NUMBERS:
    raise ValueError(f"weight must be [Cin, Cout // groups, *kernel_size] with 1 to 3 spatial axes, got {weight.shape}")
  if not is_int(groups) or groups < 1 or weight.shape[0] % groups:
    raise ValueError(
      f"groups must be a positive divisor of the weight's {weight.shape[0]} input channels, got {groups}"
    )
  kernel = jnp.transpose(weight, (*range(2, n + 2), 1, 0))
  kwargs = {
    "strides": as_tuple(stride, n, "stride"),
    "padding": as_tuple(padding, n, "padding", minimum=0),
    "output_padding": as_tuple(output_padding, n, "output_padding", minimum=0),
    "dilation": as_tuple(dilation, n, "dilation"),
    "groups": groups,
  }
  return kernel, kwargs
