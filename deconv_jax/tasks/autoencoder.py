"""Convolutional autoencoder: `models.Autoencoder`, sigmoid output, mean squared error; PSNR and SSIM at eval.

With ``config.autoencoder.tied`` the decoder owns biases only and its layers are the adjoints
(``ops.deconv2d``, i.e. ``jax.vjp`` of the conv) of the encoder's, with the encoder's kernels.

The loss is the mean squared error in ``[0, 1]`` pixel space (binary cross-entropy on the
sigmoid's logits is the usual alternative for MNIST-like data; MSE keeps the loss and PSNR one
quantity). There is no ``samples`` grid (a reconstruction needs inputs, which a state does not
hold); `reconstruct` gives the reconstructions of any images for evaluation and figures.
`reconstruction_sums` and `eval_metrics` are shared with the ``inversion`` task.
"""

from __future__ import annotations

from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from deconv_jax import models, optimizers, parallel, quality, xla_cpu

model_section = "autoencoder"  # the config section named when the model cannot take the data's images
samples = None  # no sample grid: a reconstruction needs inputs, which a state does not hold
generate_many = None  # no generated images to measure
MSE_FLOOR = 1e-10  # a perfect reconstruction's PSNR is 100 dB, not inf


class TrainState(train_state.TrainState):
  """step, params, opt_state (and the static apply_fn, tx)."""


def build_model(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]) -> models.Autoencoder:
  """`models.Autoencoder` from ``config.autoencoder`` (features, kernel_size, tied, latent_dim), sigmoid output."""
  ae = config.autoencoder
  return models.Autoencoder(
    image_shape=tuple(image_shape),
    features=tuple(ae.features),
    kernel_size=ae.kernel_size,
    latent_dim=ae.latent_dim,
    tied=ae.tied,
    output_activation="sigmoid",
  )


def create_state(config: ml_collections.ConfigDict, rng: jax.Array, info: Any, total_steps: int) -> TrainState:
  """Initial state for images of ``info.image_shape``."""
  model = build_model(config, info.image_shape)
  params = model.init(rng, jnp.zeros((1, *info.image_shape), jnp.float32))["params"]
  return TrainState.create(apply_fn=model.apply, params=params, tx=optimizers.make(config.optimizer, total_steps))


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the mean squared error of reconstructing ``image`` [N, H, W, C] in [0, 1].

  ``rng`` and ``config`` are unused (the protocol's signature): nothing here is random.
  """
  del rng, config
  images_NHWC = batch["image"]

  def loss_sum(params, images_NHWC):  # per-image mean squared error, summed over the batch
    recon_NHWC = state.apply_fn({"params": params}, images_NHWC)
    return jnp.sum(jnp.mean((recon_NHWC - images_NHWC) ** 2, axis=(1, 2, 3))), None

  (loss, _), grads = xla_cpu.mean_and_grad(loss_sum, state.params, images_NHWC)
  grads = parallel.pmean(grads, axis_name)
  return state.apply_gradients(grads=grads), parallel.pmean({"loss": loss}, axis_name)


def reconstruct(state: TrainState, images_NHWC: jax.Array) -> jax.Array:
  """Reconstructions ``[N, H, W, C]`` in ``[0, 1]`` of images ``[N, H, W, C]`` in ``[0, 1]``."""
  return state.apply_fn({"params": state.params}, images_NHWC)


def reconstruction_sums(recon_NHWC: jax.Array, images_NHWC: jax.Array, mask_N: jax.Array) -> dict[str, jax.Array]:
  """Sums over the real rows (``mask_N`` 1; 0 for padding) of per-image MSE, PSNR, SSIM, and their count.

  For image ``i``: ``mse_i = mean((recon_i - image_i)^2)``, ``psnr_i = quality.psnr_from_mse(mse_i)`` floored at
  `MSE_FLOOR` (data range 1, so at most 100 dB) and ``ssim_i = dm_pix.ssim(recon_i, image_i, max_val=1)``
  (needs H, W >= 11).
  Both image batches are ``[N, H, W, C]`` in ``[0, 1]``.
  """
  mse_N = jnp.mean((recon_NHWC - images_NHWC) ** 2, axis=(1, 2, 3))
  psnr_N = quality.psnr_from_mse(mse_N, mse_floor=MSE_FLOOR)
  ssim_N = dm_pix.ssim(recon_NHWC, images_NHWC, max_val=1.0)
  return {
    "mse": jnp.sum(mse_N * mask_N),
    "psnr": jnp.sum(psnr_N * mask_N),
    "ssim": jnp.sum(ssim_N * mask_N),
    "count": jnp.sum(mask_N),
  }


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, axis_name: str | None = None) -> dict[str, jax.Array]:
  """`reconstruction_sums` of ``batch`` (``image`` [N, H, W, C], ``mask`` [N]), ``psum``-ed over ``axis_name``."""
  sums = reconstruction_sums(reconstruct(state, batch["image"]), batch["image"], batch["mask"])
  return parallel.psum(sums, axis_name)


def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
  """``{"loss", "psnr", "ssim", "num_examples"}``: per-image MSE (the train loss), PSNR (dB) and SSIM, averaged."""
  count = max(float(sums["count"]), 1.0)
  return {
    "loss": float(sums["mse"]) / count,
    "psnr": float(sums["psnr"]) / count,
    "ssim": float(sums["ssim"]) / count,
    "num_examples": round(float(sums["count"])),
  }
