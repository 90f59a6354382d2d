"""DCGAN (Radford et al. 2015): a transposed-conv `Generator` against a strided-conv `Discriminator`.

Non-saturating loss, two optax optimizers, alternating updates (D, then G against the
updated D), optional class conditioning. Images are scaled to the generator's output
range (``[-1, 1]`` for tanh) for training; `samples` and `generate` return ``[0, 1]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax import lax

from deconv_jax import models, optimizers, parallel, xla_cpu

model_section = "generator"  # the config section named when the model cannot take the data's images
NUM_SAMPLES = 64  # the fixed latent batch of the sample grids
SAMPLE_SEED = 1234


class GANState(struct.PyTreeNode):
  """step; params and opt_state as ``{"generator": ..., "discriminator": ...}``; the generator's BN statistics.

  The modules, optimizers and latent size are static fields, as ``apply_fn`` is in flax's ``TrainState``.
  """

  step: jax.Array
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  opt_state: dict[str, Any]
  generator: models.Generator = struct.field(pytree_node=False)
  discriminator: models.Discriminator = struct.field(pytree_node=False)
  tx_g: optax.GradientTransformation = struct.field(pytree_node=False)
  tx_d: optax.GradientTransformation = struct.field(pytree_node=False)
  latent_dim: int = struct.field(pytree_node=False)


def to_model_range(images: jax.Array, output_activation: str) -> jax.Array:
  """``[0, 1]`` data -> the generator's output range (``[-1, 1]`` for tanh)."""
  return images * 2 - 1 if output_activation == "tanh" else images


def to_unit_range(images: jax.Array, output_activation: str, *, clip: bool = True) -> jax.Array:
  """The generator's output range -> ``[0, 1]``; clipped, unless ``clip=False`` (a loss keeps its gradient)."""
  images = (images + 1) / 2 if output_activation == "tanh" else images
  return jnp.clip(images, 0.0, 1.0) if clip else images


def variables(params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
  """A generator's flax variables: ``{"params", "batch_stats"}``, without ``batch_stats`` when it has none (no BN)."""
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def build_generator(config: ml_collections.ConfigDict, info: Any, axis_name: str | None = None) -> models.Generator:
  g = config.generator
  return models.Generator(
    features=tuple(g.features),
    base_shape=(g.base_size, g.base_size),
    base_features=g.base_features,
    output_hw=tuple(info.image_shape[:2]),
    upsample=g.upsample,
    resize_method=g.resize_method,
    kernel_size=g.kernel_size,
    batch_norm=g.batch_norm,
    bn_axis_name=axis_name,
    output_activation=g.output_activation,
    out_channels=info.image_shape[2],
    out_strides=g.out_strides,
    num_classes=info.num_classes if g.conditional else 0,
  )


def build_discriminator(config: ml_collections.ConfigDict, info: Any) -> models.Discriminator:
  d = config.discriminator
  return models.Discriminator(
    features=tuple(d.features),
    kernel_size=d.kernel_size,
    num_classes=info.num_classes if config.generator.conditional else 0,
  )


def _optimizers(config: ml_collections.ConfigDict, total_steps: int):
  tx_g = optimizers.make(config.optimizer, total_steps)
  d_cfg = ml_collections.ConfigDict(config.optimizer.to_dict())
  d_cfg.learning_rate = config.discriminator.learning_rate or config.optimizer.learning_rate
  return tx_g, optimizers.make(d_cfg, total_steps)


def create_state(config: ml_collections.ConfigDict, rng: jax.Array, info: Any, total_steps: int) -> GANState:
  """Initial state for images of ``info.image_shape``."""
  g_rng, d_rng = jax.random.split(rng)
  generator, discriminator = build_generator(config, info), build_discriminator(config, info)
  labels = jnp.zeros((1,), jnp.int32) if config.generator.conditional else None
  g_vars = generator.init(g_rng, jnp.zeros((1, config.generator.latent_dim)), labels)
  d_vars = discriminator.init(d_rng, jnp.zeros((1, *info.image_shape)), labels)
  params = {"generator": g_vars["params"], "discriminator": d_vars["params"]}
  tx_g, tx_d = _optimizers(config, total_steps)
  opt_state = {"generator": tx_g.init(params["generator"]), "discriminator": tx_d.init(params["discriminator"])}
  return GANState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=g_vars.get("batch_stats", {}),
    opt_state=opt_state,
    generator=generator,
    discriminator=discriminator,
    tx_g=tx_g,
    tx_d=tx_d,
    latent_dim=config.generator.latent_dim,
  )


def _latents(rng: jax.Array, offset: jax.Array | int, n: int, dim: int) -> jax.Array:
  """``[n, dim]`` normal latents, example ``i`` keyed by its global index ``offset + i`` (any device split agrees)."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), (dim,)))(offset + jnp.arange(n))


def train_step(
  state: GANState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  axis_name: str | None = None,
) -> tuple[GANState, dict[str, jax.Array]]:
  """One discriminator step, then one generator step against the updated discriminator.

  Latents are keyed per example by global index and batch statistics are averaged over
  ``axis_name``, so a step on 8 devices equals the step on one.
  """
  generator, discriminator = state.generator.clone(bn_axis_name=axis_name), state.discriminator
  real_NHWC = to_model_range(batch["image"], generator.output_activation)
  n = real_NHWC.shape[0]
  offset = 0 if axis_name is None else lax.axis_index(axis_name) * n
  z_NZ = _latents(rng, offset, n, state.latent_dim)
  labels_N = batch["label"] if generator.num_classes else None

  def generate(g_params, batch_stats):
    g_vars = variables(g_params, batch_stats)
    fake, updates = generator.apply(g_vars, z_NZ, labels_N, train=True, mutable=["batch_stats"])
    return fake, updates.get("batch_stats", {})

  # G runs forward once; its VJP is kept for the generator's step.
  fake_NHWC, g_vjp, batch_stats = jax.vjp(
    lambda g_params: generate(g_params, state.batch_stats), state.params["generator"], has_aux=True
  )

  # ---- discriminator: real -> 1, fake -> 0. D has no batch statistics: its loss is a sum over
  # examples, which xla_cpu.mean_and_grad may take in chunks.
  def d_loss_sum(d_params, real_NHWC, fake_NHWC, labels_N):
    real_logits = discriminator.apply({"params": d_params}, real_NHWC, labels_N)
    fake_logits = discriminator.apply({"params": d_params}, fake_NHWC, labels_N)
    loss = jnp.sum(jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits))
    return loss, (jax.nn.sigmoid(real_logits), jax.nn.sigmoid(fake_logits))

  (d_loss, (d_real, d_fake)), d_grads = xla_cpu.mean_and_grad(
    d_loss_sum, state.params["discriminator"], real_NHWC, lax.stop_gradient(fake_NHWC), labels_N
  )
  d_grads = parallel.pmean(d_grads, axis_name)
  d_updates, d_opt = state.tx_d.update(d_grads, state.opt_state["discriminator"], state.params["discriminator"])
  d_params = optax.apply_updates(state.params["discriminator"], d_updates)

  # ---- generator: non-saturating, maximize log D(G(z)), through the updated D, by the chain rule:
  # the loss's gradient in the fake images, pulled back through G by its VJP (kept from G's forward pass
  # above, so G runs once). That VJP is G's parameter gradient; G's batch norm couples its batch, so it is
  # taken whole, as xla_cpu.mean_and_grad(..., coupled=True) would.
  def g_loss_fn(fake_NHWC):
    return jnp.mean(jax.nn.softplus(-discriminator.apply({"params": d_params}, fake_NHWC, labels_N)))

  g_loss, g_loss_grad_NHWC = jax.value_and_grad(g_loss_fn)(fake_NHWC)
  (g_grads,) = g_vjp(g_loss_grad_NHWC)
  g_grads = parallel.pmean(g_grads, axis_name)
  g_updates, g_opt = state.tx_g.update(g_grads, state.opt_state["generator"], state.params["generator"])
  g_params = optax.apply_updates(state.params["generator"], g_updates)

  new_state = state.replace(
    step=state.step + 1,
    params={"generator": g_params, "discriminator": d_params},
    batch_stats=batch_stats,
    opt_state={"generator": g_opt, "discriminator": d_opt},
  )
  metrics = {"d_loss": d_loss, "g_loss": g_loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}
  return new_state, parallel.pmean(metrics, axis_name)


def generate(state: GANState, z_NZ: jax.Array, labels_N: jax.Array | None = None) -> jax.Array:
  """Images ``[N, H, W, C]`` in ``[0, 1]`` from latents, in inference mode.

  A conditional GAN without ``labels_N`` draws the classes ``0, 1, ..., K-1, 0, ...`` in turn.
  """
  generator = state.generator
  if generator.num_classes and labels_N is None:
    labels_N = jnp.arange(z_NZ.shape[0]) % generator.num_classes
  g_vars = variables(state.params["generator"], state.batch_stats)
  images = generator.apply(g_vars, z_NZ, labels_N if generator.num_classes else None)
  return to_unit_range(images, generator.output_activation)


MEASURE_SEED = 4321  # the latents of measured samples; never those of the sample grid


def generate_many(state: GANState, n: int, seed: int = MEASURE_SEED, batch_size: int = 500) -> np.ndarray:
  """``n`` images ``[n, H, W, C]`` in ``[0, 1]`` from latents drawn with ``seed``, generated in batches."""
  z_NZ = sample_latents(state, n, seed)
  labels_N = jnp.arange(n) % state.generator.num_classes if state.generator.num_classes else None
  fn = jax.jit(generate)
  chunks = []
  for start in range(0, n, batch_size):
    labels = None if labels_N is None else labels_N[start : start + batch_size]
    chunks.append(np.asarray(fn(state, z_NZ[start : start + batch_size], labels)))
  return np.concatenate(chunks)


def sample_latents(state: GANState, n: int, seed: int = SAMPLE_SEED) -> jax.Array:
  """``[n, latent_dim]`` standard normal latents from ``seed``."""
  return jax.random.normal(jax.random.key(seed), (n, state.latent_dim))


def samples(state: GANState) -> jax.Array:
  """The sample grid ``[R, K, H, W, C]`` in ``[0, 1]``, from the same latents at every step.

  A conditional GAN over ``K`` classes draws class ``k`` in column ``k`` (``R = NUM_SAMPLES // K`` rows);
  an unconditional one fills 8 x 8.
  """
  k = state.generator.num_classes
  rows, cols = (max(1, NUM_SAMPLES // k), k) if k else (8, 8)
  labels_N = jnp.tile(jnp.arange(cols), rows) if k else None
  images = generate(state, sample_latents(state, rows * cols), labels_N)
  return images.reshape(rows, cols, *images.shape[1:])


def eval_step(state: GANState, batch: dict[str, jax.Array], *, axis_name: str | None = None) -> dict[str, jax.Array]:
  """The discriminator on the batch's real images and on as many fakes (fixed latents): masked sums."""
  real_NHWC = to_model_range(batch["image"], state.generator.output_activation)
  n = real_NHWC.shape[0]
  mask_N = batch["mask"]
  labels_N = batch["label"] if state.generator.num_classes else None
  fake_NHWC = to_model_range(generate(state, sample_latents(state, n), labels_N), state.generator.output_activation)
  real_logits = state.discriminator.apply({"params": state.params["discriminator"]}, real_NHWC, labels_N)
  fake_logits = state.discriminator.apply({"params": state.params["discriminator"]}, fake_NHWC, labels_N)
  losses_N = jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)
  sums = {
    "d_loss": jnp.sum(losses_N * mask_N),
    "real_correct": jnp.sum((real_logits > 0) * mask_N),
    "fake_correct": jnp.sum((fake_logits < 0) * mask_N),
    "count": jnp.sum(mask_N),
  }
  return parallel.psum(sums, axis_name)


def eval_metrics(sums: dict[str, float]) -> dict[str, float]:
  """The discriminator on held-out real images and on as many fresh fakes: loss and accuracies."""
  count = max(float(sums["count"]), 1.0)
  return {
    "d_loss": float(sums["d_loss"]) / count,
    "d_real_accuracy": float(sums["real_correct"]) / count,
    "d_fake_accuracy": float(sums["fake_correct"]) / count,
    "num_examples": round(float(sums["count"])),
  }
