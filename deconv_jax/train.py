r"""Trains a task from a config: ``python -m deconv_jax.train --config configs/X.py --workdir DIR``.

With no arguments it runs ``configs/quickstart.py`` into ``workdirs/quickstart``.
Any config key can be overridden: ``--config.batch_size=64 --config.model.features='(16, 32)'``.
Running the same command again resumes from the latest checkpoint in ``DIR``.

Stages, in the order `train_and_evaluate` runs them: config & workdir checks,
input, model & state, checkpoint restore, update step, the loop (metrics,
evals, checkpoints), summary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental import multihost_utils
from ml_collections import config_flags

from deconv_jax import checkpoint, cli, data, eval_loop, parallel, tasks, tfds_prepare, xla_cpu
from deconv_jax import config as config_lib
from deconv_jax import workdir as workdir_lib
from deconv_jax.metric_writers import MetricWriter
from deconv_jax.progress import Progress, format_metrics, format_seconds

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "quickstart.py")


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


class Preempted(Exception):  # not an error: the run stopped where it was asked to, and saved
  """`train_and_evaluate` stopped because ``should_stop`` said so, after saving a checkpoint at ``step``."""

  def __init__(self, step: int):
    super().__init__(f"preempted at step {step}: its checkpoint is saved; run the same command to resume")
    self.step = step


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, should_stop: Callable[[int], bool] | None = None
) -> dict[str, float]:
  """Runs (or resumes) training to the end; returns the final eval metrics. Importable from a notebook.

  The workdir is locked while the run uses it: a second run on it is refused with one line.
  ``should_stop(step)`` is asked after every step (by every process, at the same steps); when it says
  yes, the run saves a checkpoint of that step and raises `Preempted` (`StopSignal` asks SIGTERM and SIGINT).
  """
  with contextlib.ExitStack() as held:  # what the run holds (lock, checkpoint manager, writer) until it ends
    return _train_and_evaluate(config, workdir, held, should_stop)


def _train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  held: contextlib.ExitStack,
  should_stop: Callable[[int], bool] | None,
) -> dict[str, float]:
  # ---------------------------------------------------------------- config & workdir
  config_lib.validate(config)
  xla_cpu.reuse_freed_memory()  # each step's buffers stay mapped (no page faults per step); the math is the same
  task = tasks.get(config.task)
  try:
    parallel.check_batch_size(config.batch_size, "batch_size")
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None

  # ---------------------------------------------------------------- input
  tfds_prepare.prepare(config.dataset, log=_log)  # a TFDS dataset missing, and download asked for: here, once
  train_source = data.get_source(config.dataset, config.dataset.train_split)
  eval_source = data.get_source(config.dataset, config.dataset.eval_split)
  info = data.get_info(config.dataset, config.dataset.train_split)
  if config.batch_size > len(train_source):  # each batch would hold the split several times over
    raise config_lib.ConfigError(
      f"config.batch_size={config.batch_size} is larger than the {len(train_source)} examples of "
      f"{config.dataset.source}:{config.dataset.train_split}: use at most {len(train_source)}"
    )
  total_steps = config_lib.num_train_steps(config, len(train_source))

  # ---------------------------------------------------------------- model & state
  rng = jax.random.key(config.seed)
  init_rng, train_rng = jax.random.split(rng)
  tasks.check_model_fits(task, config, info)  # Before any real work.
  run_dir = workdir_lib.RunDir(workdir)
  found = run_dir.read()  # what the directory holds, read once for every decision below
  check_duration_unchanged(config, found, workdir, total_steps, len(train_source))
  held.enter_context(workdir_lib.prepare(config, workdir, found))
  state = task.create_state(config, init_rng, info, total_steps)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))

  train_iter = iter(data.train_loader(train_source, global_batch_size=config.batch_size, seed=config.seed))

  # ---------------------------------------------------------------- checkpoint restore
  mngr = checkpoint.manager(run_dir.checkpoints, config.keep_checkpoints)
  held.callback(mngr.close)  # an open manager's threads would outlive the run
  start_step = 0
  restored = checkpoint.restore_latest(mngr, state, train_iter, damaged=run_dir.damaged_checkpoints, log=_log)
  if restored is not None:
    state, _ = restored
    start_step = int(state.step)
    if start_step < total_steps:
      _log(f"resumed from {workdir} at step {start_step}")

  # ---------------------------------------------------------------- update step
  dp = parallel.DataParallel(config.parallel)  # every device of every process
  compiled_train_step = dp.train_step(
    lambda s, b, r, axis_name: task.train_step(s, b, r, config=config, axis_name=axis_name)
  )
  state = dp.put_state(state)
  compiled_eval_step = eval_loop.compile_eval_step(task, dp)
  samples_fn = dp.on_state(task.samples) if task.samples is not None else None  # generator tasks: a grid of samples
  host_state = lambda: dp.get_state(state)

  def save(step: int) -> None:
    checkpoint.save(mngr, step, host_state(), train_iter)

  def stop_if_not_finite(metrics: dict[str, float], split: str, step: int) -> None:
    """A NaN or infinite metric ends the run (exit status 3), before anything of this step is saved."""
    if bad := [k for k, v in metrics.items() if not np.isfinite(v)]:
      if progress is not None:
        progress.close()
      kept = mngr.latest_step()
      kept = f"the checkpoint of step {kept} in {workdir} is kept" if kept is not None else "no checkpoint was saved"
      raise FloatingPointError(f"{split} {bad[0]} is {metrics[bad[0]]} at step {step}: stopped; {kept}")

  # ---------------------------------------------------------------- loop
  writer = MetricWriter(
    run_dir.metrics,
    run_dir.tensorboard,
    run_dir.samples,
    resume_step=start_step if start_step < total_steps else None,
    log=_log,
  )
  held.callback(writer.close)
  eval_metrics: dict[str, float] = {}
  step = start_step
  t_start = time.time()
  progress = None
  if start_step >= total_steps:  # Complete already: evaluate what is there; its eval record exists.
    _log(f"already trained to step {start_step} of {total_steps}; evaluating {workdir}")
    eval_metrics = eval_loop.evaluate_state(task, compiled_eval_step, state, eval_source, config.eval_batch_size)
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
    state, metrics = compiled_train_step(state, batch, jax.random.fold_in(train_rng, step))
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
      stop_if_not_finite(train_metrics, "train", step)
      now = time.time()
      if step > steps_at_last:
        train_metrics["steps_per_sec"] = (step - steps_at_last) / max(now - t_last, 1e-9)
        t_last, steps_at_last = now, step
        progress.log(step, train_metrics, train_metrics["steps_per_sec"])
      writer.write(step, "train", train_metrics)
    if step % config.eval_every_steps == 0 or last:
      eval_metrics = eval_loop.evaluate_state(task, compiled_eval_step, state, eval_source, config.eval_batch_size)
      stop_if_not_finite(eval_metrics, "eval", step)
      writer.write(step, "eval", eval_metrics)
      progress.write(f"step {step}/{total_steps} | eval {config.dataset.eval_split}: " + format_metrics(eval_metrics))
    if samples_fn is not None and (step % config.sample_every_steps == 0 or last):
      writer.write_images(step, "samples", jax.device_get(samples_fn(state)))
    if step % config.checkpoint_every_steps == 0 or last:
      save(step)
    if should_stop is not None and should_stop(step) and not last:
      if step % config.checkpoint_every_steps:
        save(step)
      progress.close()
      raise Preempted(step)

  # ---------------------------------------------------------------- summary
  if progress is not None:
    progress.close()
  _log(
    f"done: {config.task} {step} steps in {format_seconds(time.time() - t_start)} | "
    f"eval {config.dataset.eval_split} {format_metrics(eval_metrics)} | workdir {workdir}"
  )
  return eval_metrics


def check_duration_unchanged(
  config: ml_collections.ConfigDict, found: workdir_lib.Found, workdir: str, total_steps: int, examples: int
) -> None:
  """Refuses to resume with another duration when the learning-rate schedule is built from it (one line).

  A cosine schedule decays to 0 at the run's last step: a resume that changed the duration would
  jump to another point of another curve. A constant schedule does not depend on it, so such a
  run may be extended. ``found``: what the run directory ``workdir`` holds (`workdir.RunDir.read`).
  """
  if found.config is None or found.step is None or config.optimizer.schedule == "constant":
    return
  started = config_lib.num_train_steps(found.config, examples)
  if started != total_steps:
    key = "num_train_steps" if config.num_train_steps > 0 else "num_epochs"
    raise config_lib.ConfigError(
      f"config.{key}: the run in {workdir} has a {config.optimizer.schedule} learning-rate schedule over "
      f"{started} steps; resuming for {total_steps} would change it: keep its duration, or use a new --workdir"
    )


class StopSignal:
  """``should_stop`` for `train_and_evaluate`: true after SIGTERM (how Cloud TPU and most schedulers preempt)
  or SIGINT (Ctrl-C) has arrived, at a step every process agrees on.

  One process: a Python handler records the signal. Several: JAX's distributed runtime already listens
  for SIGTERM and `multihost_utils.reached_preemption_sync_point` names the same step on every process;
  SIGINT is passed on to it as SIGTERM.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.received = False
    signal.signal(signal.SIGINT, self._forward if self.multi_process else self._record)
    if not self.multi_process:
      signal.signal(signal.SIGTERM, self._record)

  def _record(self, signum: int, frame: object) -> None:
    self.received = True

  def _forward(self, signum: int, frame: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)

  def __call__(self, step: int) -> bool:
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.received


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
    train_and_evaluate(FLAGS.config, FLAGS.workdir or os.path.join("workdirs", name), should_stop=StopSignal())
  except Preempted as e:
    _log(str(e))
    sys.exit(0)
  except FloatingPointError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(3)


def run() -> None:
  """Console entry point (``python -m deconv_jax.train``, ``deconv-train``)."""
  cli.run(main, define_flags)


if __name__ == "__main__":
  run()
