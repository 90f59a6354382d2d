"""The task registry and the `tasks.Task` protocol: every task module is registered and satisfies it."""

import importlib
import inspect
import pkgutil
import re

import pytest

from deconv_jax import config as config_lib
from deconv_jax import tasks, train

MODULES = sorted(m.name for m in pkgutil.iter_modules(tasks.__path__))  # tasks/ holds tasks only
FUNCTIONS = ("create_state", "train_step", "eval_step", "eval_metrics")
OPTIONAL = ("samples", "generate_many")


def _parameters(fn, skip=0):
  return [(p.name, p.kind, p.default) for p in list(inspect.signature(fn).parameters.values())[skip:]]


def test_every_task_module_is_registered_under_its_name():
  assert sorted(tasks._TASKS) == MODULES
  for name in MODULES:
    assert tasks.get(name) is importlib.import_module(f"deconv_jax.tasks.{name}")


@pytest.mark.parametrize("name", MODULES)
def test_a_task_module_satisfies_the_protocol(name):
  task = tasks.get(name)
  assert isinstance(task, tasks.Task)
  for function in FUNCTIONS:  # the protocol's methods without self: same names, kinds and defaults
    assert _parameters(getattr(task, function)) == _parameters(getattr(tasks.Task, function), skip=1), function
  for member in OPTIONAL:
    assert getattr(task, member) is None or callable(getattr(task, member)), member
  assert isinstance(config_lib.base()[task.model_section], type(config_lib.base().model))


def test_only_the_generator_tasks_draw_samples():
  drawn = {name for name in MODULES if tasks.get(name).samples is not None}
  measured = {name for name in MODULES if tasks.get(name).generate_many is not None}
  assert drawn == measured == {"gan"}


def test_an_unknown_task_is_a_config_error_naming_the_registered_ones(tmp_path):
  message = f"config.task='nope' is not allowed: one of {tuple(tasks._TASKS)}"
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    tasks.get("nope")
  c = config_lib.base()
  c.task = "nope"
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
