r"""Measured speed: ``python -m deconv_jax.experiments.speed`` prints one JSON object per line on stdout.

Eight benchmarks (``--only`` picks among them):

- ``train_step``: whole train steps, as `train` compiles them for one device
  (`parallel.DataParallel`, the state donated), on synthetic ``[N, 28, 28, 1]`` data
  already on the device (no input pipeline): the classifier of ``--config``
  (by default the CNN with Adam: the peers' ``seedcnn``) at each of
  ``--batch_sizes``, the peers' DCGAN (`train_steps.peers_dcgan_config`) at batch 128 and
  ``configs/gan.py`` at its batch size. Each is timed twice, alternately: the
  fast path (what `train` runs) and the plain one (traced inside
  ``xla_cpu.plain_xla()`` and compiled with XLA's default options: the program stock
  JAX compiles; both run in one process, which sets `xla_cpu` as `train` does). The
  records follow the protocol of the peers benchmark in ``../shared/bench/peers``
  (``kind``, ``framework`` = ``project``, ``mode`` = the path, ``model``,
  ``batch``, ``ips_median``, ``ips_min``, ``ips_max``, ``first_step_s``,
  ``achieved_gflops``, ...), so its ``summarize.py`` tables them beside the peers.
- ``op_profile``: where the time goes: for the same train steps and paths, the
  top XLA ops per step from a ``jax.profiler`` trace, each with what it computes
  (``dot f32[3872,64]``, ``convolution ... window ...``) and its share of the step.
- ``conv_library``: each convolution of those steps (`primitives.CONV_LIBRARY_CASES`), forward
  and both gradients, compiled with XLA's default options (on CPU: YNNPACK's
  convolution) and with `xla_cpu.compiler_options` (XLA's own), alternately.
- ``deconv_kernel_grad``, ``max_pool_grad``, ``deconv3d_kernel_grad`` and
  ``deconv3d_input_grad``: how the primitives of `ops` compare with the plain
  XLA lowering, each pair measured side by side in one run. The kernel gradient
  of ``lax.conv_transpose(..., transpose_kernel=True)`` (what flax
  ``ConvTranspose`` uses) against that through `ops.deconv2d` for the same map;
  the input gradient of ``lax.reduce_window`` max-pool against that of
  `ops.max_pool` (and of plain reshape-and-max, which splits ties); the kernel
  and input gradients of a 3-D transposed conv, ``lax.conv_transpose`` against
  `ops.deconv`. Both variants are checked to give the same gradient, then timed
  alternately (A, B, A, B, ...) so that the machine's noise hits both alike;
  ``ratio`` is ``median(A) / median(B)`` (> 1: the `ops` path is faster).
- ``attribute_with_rule``: guided backprop of the CNN on a batch of 64, through the old activation-field swap
  and through `attribution.with_rule`'s jaxpr rewrite, alternately: the rewrite runs at trace time, so the
  compiled programs should cost the same.

Every record carries ``backend`` and ``devices``. Examples::

  python -m deconv_jax.experiments.speed --only=train_step > project.jsonl
  python -m deconv_jax.experiments.speed --only=train_step --train_models=seedcnn --batch_sizes=256 --paths=fast
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from deconv_jax import cli, tasks, xla_cpu
from deconv_jax import config as config_lib
from deconv_jax.experiments.speed import op_profile, primitives, train_steps

BENCHMARKS = (
  "train_step",
  "op_profile",
  "conv_library",
  "deconv_kernel_grad",
  "max_pool_grad",
  "deconv3d_kernel_grad",
  "deconv3d_input_grad",
  "attribute_with_rule",
)
PATHS = ("fast", "plain")


def run_benchmarks(
  only: Sequence[str] = BENCHMARKS,
  *,
  batch_sizes: Sequence[int] = (32, 256),
  train_models: Sequence[str] = tuple(train_steps.MODELS),
  paths: Sequence[str] = PATHS,
  target_s: float = 3.0,
  steps: int = 20,
  repeats: int = 5,
  config: ml_collections.ConfigDict | None = None,
  emit: Callable[[dict[str, Any]], object] | None = None,
) -> list[dict[str, Any]]:
  """Runs the benchmarks named in ``only`` (in `BENCHMARKS` order); ``emit`` sees each record as it is made.

  ``train_step`` and ``op_profile`` time each of ``train_models`` (keys of `train_steps.MODELS`): the classifier
  at every one of ``batch_sizes``, the peers' DCGAN at batch 128, ``configs/gan.py`` at its own batch size.
  """
  records = []

  def add(record: dict[str, Any]) -> None:
    records.append(record)
    if emit is not None:
      emit(record)

  train_runs = [
    (model, size)
    for model, spec in train_steps.MODELS.items()
    if model in train_models
    for size in (batch_sizes if spec.batch_size is None else [spec.batch_size()])
  ]
  if "train_step" in only:
    for model, batch_size in train_runs:
      for record in train_steps.train_step_benchmark(
        model, batch_size, repeats=repeats, target_s=target_s, config=config, paths=paths
      ):
        add(record)
  if "op_profile" in only:
    for model, batch_size in train_runs:
      for path in paths:
        for record in op_profile.op_profile_benchmark(model, batch_size, path=path, config=config):
          add(record)
  if "conv_library" in only:
    for case in primitives.CONV_LIBRARY_CASES:
      add(primitives.conv_library_benchmark(*case, repeats=repeats))
  if "deconv_kernel_grad" in only:
    add(primitives.deconv_kernel_grad_benchmark(calls=steps, repeats=repeats))
  if "max_pool_grad" in only:
    add(primitives.max_pool_grad_benchmark(calls=steps, repeats=repeats))
  for wrt in ("kernel", "input"):
    if f"deconv3d_{wrt}_grad" in only:
      add(primitives.deconv3d_grad_benchmark(wrt, calls=steps, repeats=repeats))
  if "attribute_with_rule" in only:
    add(primitives.attribute_with_rule_benchmark(calls=steps, repeats=repeats))
  return records


def _positive_ints(values: Sequence[str]) -> bool:
  return bool(values) and all(v.strip().isdigit() and int(v) > 0 for v in values)


def define_flags() -> None:
  flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes of the classifier's train step.")
  models = ", ".join(train_steps.MODELS)
  flags.DEFINE_list("train_models", list(train_steps.MODELS), f"Train steps to time, of {models}.")
  flags.DEFINE_list("paths", list(PATHS), "Paths of each train step to time or profile: fast, plain (plain_xla).")
  flags.DEFINE_float(
    "target_s", 3.0, "Seconds per timed run of a train step (the peers' --target-s).", lower_bound=0.01
  )
  flags.DEFINE_integer(
    "repeats", 5, "Timed runs per train step, or samples per variant (the others); medians are reported.", lower_bound=1
  )
  flags.DEFINE_integer("steps", 20, "Calls per timed sample of the op benchmarks.", lower_bound=1)
  flags.DEFINE_list("only", list(BENCHMARKS), f"Which benchmarks to run, of {', '.join(BENCHMARKS)}.")
  # cli.parse_flags reads --config; here it is the model and optimizer of the classifier's train step.
  config_flags.DEFINE_config_dict(
    "config",
    config_lib.base(),
    "Model and optimizer of the classifier's train step (--config.model.features='(16, 32)').",
  )
  flags.register_validator("batch_sizes", _positive_ints, message="must be a comma-separated list of positive ints")
  for name, allowed in (("only", BENCHMARKS), ("train_models", tuple(train_steps.MODELS)), ("paths", PATHS)):
    flags.register_validator(
      name,
      lambda values, allowed=allowed: bool(values) and all(v in allowed for v in values),
      message=f"must be a comma-separated list of {', '.join(allowed)}",
    )


def _print_json(record: dict[str, Any]) -> None:
  bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
  if bad:
    raise RuntimeError(f"{record.get('benchmark') or record['model']}: non-finite {', '.join(bad)}")
  print(json.dumps(record), flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}: use --only, --batch_sizes, --steps, --repeats, --config.KEY=VALUE")
  FLAGS = flags.FLAGS
  config_lib.validate(FLAGS.config)
  xla_cpu.reuse_freed_memory()  # as train does: both paths of a step run in a process set up like train's
  if "train_step" in FLAGS.only:
    tasks.check_model_fits(tasks.get("classifier"), FLAGS.config, train_steps.INFO)  # As train does, before any work.
  run_benchmarks(
    FLAGS.only,
    batch_sizes=[int(b) for b in FLAGS.batch_sizes],
    train_models=FLAGS.train_models,
    paths=FLAGS.paths,
    target_s=FLAGS.target_s,
    steps=FLAGS.steps,
    repeats=FLAGS.repeats,
    config=FLAGS.config,
    emit=_print_json,
  )


def run() -> None:
  """Console entry point (``python -m deconv_jax.experiments.speed``)."""
  cli.run(main, define_flags)
