"""On-device data augmentation: a random affine warp per image, drawn from a key.

Runs inside the jitted train step, so a resumed run (whose keys are folded from
the seed and the step number) replays exactly the same augmentations.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_affine(
  key: jax.Array,
  image: jax.Array,
  *,
  max_shift: float = 0.0,
  max_rotation: float = 0.0,
  max_scale: float = 0.0,
) -> jax.Array:
  """Warps one ``[H, W, C]`` image by a random rotation, scale and shift about its centre.

  Angles are drawn uniformly from ``±max_rotation`` degrees, the scale from
  ``1 ± max_scale``, each shift from ``±max_shift`` pixels. Bilinear sampling;
  pixels from outside the image are 0 (background). With all three 0 it is the identity.
  """
  h, w, _ = image.shape
  k_rot, k_scale, k_shift = jax.random.split(key, 3)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, (), minval=-max_rotation, maxval=max_rotation))
  scale = 1.0 + jax.random.uniform(k_scale, (), minval=-max_scale, maxval=max_scale)
  shift = jax.random.uniform(k_shift, (2,), minval=-max_shift, maxval=max_shift)
  # Output pixel p samples the input at centre + R(-angle) (p - centre - shift) / scale.
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  offsets = jnp.stack([rows, cols]) - (centre + shift)[:, None, None]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  inverse = jnp.array([[cos, sin], [-sin, cos]]) / scale
  coords = jnp.einsum("ij,jhw->ihw", inverse, offsets) + centre[:, None, None]
  warp = lambda channel: jax.scipy.ndimage.map_coordinates(channel, list(coords), order=1, mode="constant", cval=0.0)
  return jax.vmap(warp, in_axes=-1, out_axes=-1)(image)


def augment_batch(key: jax.Array, images: jax.Array, offset: jax.Array | int = 0, **kwargs) -> jax.Array:
  """`random_affine` over ``[N, H, W, C]``; image ``i`` uses ``fold_in(key, offset + i)``.

  Keys depend on each example's index in the *global* batch (``offset`` is the
  index of this shard's first example), so splitting a batch across devices
  does not change any image's augmentation.
  """
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(images.shape[0]))
  return jax.vmap(lambda k, x: random_affine(k, x, **kwargs))(keys, images)
