r"""Trains a task from a config: ``python -m deconv_jax.train --config configs/X.py --workdir DIR``.

With no arguments it runs ``configs/quickstart.py`` into ``workdirs/quickstart``.
Any config key can be overridden: ``--config.batch_size=64 --config.model.features='(16, 32)'``.
Running the same command again resumes from the latest checkpoint in ``DIR``.

Stages, in the order `train_and_evaluate` runs them: config & workdir checks,
input, model & state, checkpoint restore, update step, the loop (metrics,
evals, checkpoints), summary.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from deconv_jax import checkpoint, cli, data, eval_loop, parallel, tasks
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.metric_writers import MetricWriter
from deconv_jax.progress import Progress, format_metrics, format_seconds

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.py")


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training to the end; returns the final eval metrics. Importable from a notebook."""
  # ---------------------------------------------------------------- config & workdir
  config_lib.validate(config)
  task = tasks.get(config.task)
  try:
    parallel.check_batch_size(config.batch_size, "batch_size")
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None

  # ---------------------------------------------------------------- input
  train_source = data.get_source(config.dataset, config.dataset.train_split)
  eval_source = data.get_source(config.dataset, config.dataset.eval_split)
  info = data.get_info(config.dataset, config.dataset.train_split)
  total_steps = config_lib.num_train_steps(config, len(train_source))

  # ---------------------------------------------------------------- model & state
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  tasks.check_model_fits(task, config, info)  # Before any real work.
  workdir_lib.prepare(config, workdir)
  state = task.create_state(config, init_rng, info, total_steps)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  train_iter = iter(data.train_loader(train_source, global_batch_size=config.batch_size, seed=config.seed))

  # ---------------------------------------------------------------- checkpoint restore
  mngr = checkpoint.manager(workdir, config.keep_checkpoints)
  start_step = 0
  try:
    restored = checkpoint.restore_latest(mngr, state, train_iter, log=_log)
  except checkpoint.CheckpointError:
    mngr.close()  # an open manager's threads outlive the exit otherwise
    raise
  if restored is not None:
    state, _ = restored
    start_step = int(state.step)
    if start_step < total_steps:
      _log(f"resumed from {workdir} at step {start_step}")

  # ---------------------------------------------------------------- update step
  dp = parallel.DataParallel(config.parallel)  # every device of every process
  p_train_step = dp.train_step(lambda s, b, r, axis_name: task.train_step(s, b, r, config=config, axis_name=axis_name))
  state = dp.put_state(state)
  p_eval_step = eval_loop.compile_eval_step(task, dp)
  samples_fn = dp.on_state(task.samples) if task.samples is not None else None  # generator tasks: a grid of samples
  host_state = lambda: dp.get_state(state)

  def save(step: int) -> None:
    checkpoint.save(mngr, step, host_state(), train_iter)

  # ---------------------------------------------------------------- loop
  writer = MetricWriter(workdir)
  eval_metrics: dict[str, float] = {}
  step = start_step
  t_start = time.time()
  progress = None
  if start_step >= total_steps:  # Complete already: evaluate what is there; its eval record exists.
    _log(f"already trained to step {start_step} of {total_steps}; evaluating {workdir}")
    eval_metrics = eval_loop.evaluate_state(task, p_eval_step, state, eval_source, config.eval_batch_size)
  else:
    _log(
      f"training {config.task} ({num_params:,} params) on {config.dataset.source}:{config.dataset.train_split} "
      f"({len(train_source):,} examples, {info.image_shape}) for {total_steps} steps of {config.batch_size} "
      f"on {jax.device_count()} device(s) -> {workdir}"
    )
    progress = Progress(total_steps, start_step)
  pending: list[dict[str, jax.Array]] = []  # train metrics since the last log step
  in_flight = None  # the metrics of a dispatched step not yet counted as done
  t_last, steps_at_last = t_start, start_step
  while step < total_steps:
    batch = next(train_iter)  # this process's rows; the step places them
    state, metrics = p_train_step(state, batch, jax.random.fold_in(train_rng, step))
    if in_flight is not None:  # Count a step when it is computed, keeping one step in flight.
      jax.block_until_ready(in_flight)
      progress.step()
    in_flight = metrics
    pending.append(metrics)
    step += 1
    if step == start_step + 1:  # The first step compiles: say so, and time the rates from its end.
      jax.block_until_ready(in_flight)
      progress.step()
      in_flight = None
      t_last, steps_at_last = time.time(), step
      progress.write(f"step {step}/{total_steps} | compiled and ran the first step in {t_last - t_start:.1f} s")
    last = step == total_steps
    if step % config.log_every_steps == 0 or last or step % config.checkpoint_every_steps == 0:
      train_metrics = {k: float(np.mean([np.asarray(m[k]).mean() for m in pending])) for k in pending[0]}
      pending.clear()
      if in_flight is not None:  # float() above waited for it
        progress.step()
        in_flight = None
      if bad := [k for k, v in train_metrics.items() if not np.isfinite(v)]:
        mngr.wait_until_finished()
        progress.close()
        raise FloatingPointError(
          f"{bad[0]} is {train_metrics[bad[0]]} at step {step}: stopped; the last good checkpoint in {workdir} is kept"
        )
      now = time.time()
      if step > steps_at_last:
        train_metrics["steps_per_sec"] = (step - steps_at_last) / max(now - t_last, 1e-9)
        t_last, steps_at_last = now, step
        progress.log(step, train_metrics, train_metrics["steps_per_sec"])
      writer.write(step, "train", train_metrics)
    if step % config.eval_every_steps == 0 or last:
      eval_metrics = eval_loop.evaluate_state(task, p_eval_step, state, eval_source, config.eval_batch_size)
      writer.write(step, "eval", eval_metrics)
      progress.write(f"step {step}/{total_steps} | eval {config.dataset.eval_split}: " + format_metrics(eval_metrics))
    if samples_fn is not None and (step % config.sample_every_steps == 0 or last):
      writer.write_images(step, "samples", jax.device_get(samples_fn(state)))
    if step % config.checkpoint_every_steps == 0 or last:
      save(step)

  # ---------------------------------------------------------------- summary
  if progress is not None:
    progress.close()
  mngr.wait_until_finished()
  mngr.close()
  writer.close()
  _log(
    f"done: {config.task} {step} steps in {format_seconds(time.time() - t_start)} | "
    f"eval {config.dataset.eval_split} {format_metrics(eval_metrics)} | workdir {workdir}"
  )
  return eval_metrics


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file.", lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<config name>).")
  flags.DEFINE_bool("distributed", False, "Multi-host: discover the cluster (Cloud TPU pod, SLURM, Open MPI).")
  flags.DEFINE_string("coordinator_address", "", "Multi-process: host:port of process 0.")
  flags.DEFINE_integer("num_processes", 1, "Multi-process: number of processes.")
  flags.DEFINE_integer("process_id", 0, "Multi-process: this process's index.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.die(f"unexpected arguments {argv[1:]}: use --config=FILE, --workdir=DIR and --config.KEY=VALUE")
  FLAGS = flags.FLAGS
  if FLAGS.num_processes > 1 and not FLAGS.coordinator_address:
    cli.die(f"--num_processes={FLAGS.num_processes} needs --coordinator_address=HOST:PORT (process 0's address)")
  parallel.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed)
  name = os.path.splitext(os.path.basename(FLAGS["config"].config_filename))[0]
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir or os.path.join("workdirs", name))
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(3)


def run() -> None:
  """Console entry point (``python -m deconv_jax.train``, ``deconv-train``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
