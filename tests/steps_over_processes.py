"""Trains a tiny classifier or GAN a few steps on fixed global batches; process 0 writes what it ended with.

``python tests/steps_over_processes.py TASK KIND STEPS OUT [COORDINATOR NUM_PROCESSES PROCESS_ID]``

Every run, whatever its process and device counts, sees the same global batches (step ``s`` takes
rows ``[s * B, (s + 1) * B)`` of embedded MNIST-5k's train split), each process feeding its own
contiguous rows of them, as `data.train_loader` does, so runs over different layouts must agree.
``OUT`` (an ``.npz``) holds the final parameters and eval metrics, plus the sample grid of a GAN.
"""

import sys

import jax
import numpy as np

from deconv_jax import config as config_lib
from deconv_jax import data, eval_loop, parallel, tasks


def tiny_config(task: str) -> config_lib.ml_collections.ConfigDict:
  c = config_lib.base()
  c.task = task
  c.batch_size = 16
  c.model.features = (8, 16)
  c.model.dense = (32,)
  c.augment.max_shift = 2.0
  c.augment.max_rotation = 10.0
  c.generator.latent_dim = 8
  c.generator.base_features = 8
  c.generator.features = (8, 4)
  c.discriminator.features = (8, 8)
  if task == "gan":
    # Adam's first steps are about lr * sign(gradient): the generator's BN leaves gradient entries at 0 up to
    # rounding, whose sign then differs with the reduction order (2 * lr apart). Momentum keeps rounding small.
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.05
  return c


def main(task_name: str, kind: str, steps: int, out: str, coordinator: str = "", num_processes: int = 1, pid: int = 0):
  parallel.initialize(coordinator, num_processes, pid)
  config, task = tiny_config(task_name), tasks.get(task_name)
  source = data.get_source(config.dataset, "train")
  info = data.get_info(config.dataset, "train")
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  dp = parallel.DataParallel(kind)
  state = dp.put_state(task.create_state(config, init_rng, info, steps))
  step_fn = dp.train_step(lambda s, b, r, axis_name: task.train_step(s, b, r, config=config, axis_name=axis_name))
  rows = config.batch_size // jax.process_count()
  for step in range(steps):
    first = step * config.batch_size + jax.process_index() * rows
    images, labels = zip(*((source[i]["image"], source[i]["label"]) for i in range(first, first + rows)))
    batch = {"image": data.to_float(np.stack(images)), "label": np.asarray(labels, np.int32)}
    state, _ = step_fn(state, batch, jax.random.fold_in(train_rng, step))
  eval_source = data.get_source(config.dataset, "validation")
  metrics = eval_loop.evaluate_state(task, eval_loop.compile_eval_step(task, dp), state, eval_source, 64)
  result = {f"param{i}": x for i, x in enumerate(jax.tree.leaves(dp.get_state(state).params))}
  result.update({f"eval_{k}": np.float64(v) for k, v in metrics.items()})
  if task.samples is not None:
    result["samples"] = np.asarray(jax.device_get(dp.on_state(task.samples)(state)))
  if jax.process_index() == 0:
    np.savez(out, **result)


if __name__ == "__main__":
  task_name, kind, steps, out, *distributed = sys.argv[1:]
  coordinator, num_processes, pid = distributed or ("", "1", "0")
  main(task_name, kind, int(steps), out, coordinator, int(num_processes), int(pid))
