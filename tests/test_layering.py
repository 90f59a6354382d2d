"""Imports point one way: down the floors below, for every import in ``deconv_jax/``.

A module may import only modules on lower floors, never one on its own floor or above. Every import
statement counts, those inside functions too: a function-local import is an arrow.
"""

import ast
import pathlib

import pytest
from conftest import REPO

FLOORS = [
  ["storage"],  # where every file of a run is read and written: a local disk or a gs:// bucket
  # The math, and what imports nothing of ours. xla_cpu is how steps run fast on CPU, never what they compute;
  # jaxpr_rules is the one module that reads JAX's internals.
  [
    *("ops.shapes", "xla_cpu", "optimizers", "data", "checkpoint", "augment", "quality", "progress"),
    *("figures", "jaxpr_rules"),
  ],
  # attribution works on any JAX function, models included, without importing them.
  # tfds_prepare: getting a TFDS dataset onto disk, which data then reads.
  [
    *("ops.adjoint", "ops.pooling", "ops.upsampling", "ops.torch_interop", "metric_writers", "attribution"),
    "tfds_prepare",
  ],
  ["ops"],
  ["models", "parallel"],  # parallel compiles each step with xla_cpu.compiler_options
  ["config"],  # the values a key allows come from data, models and parallel, which own them
  ["workdir"],  # it is given the task of the run it restores, so that a task can restore a run
  ["tasks.classifier", "tasks.gan", "tasks.autoencoder"],
  ["tasks.inversion"],  # a GAN's generator, scored as the autoencoder is, inverting a classifier run
  ["tasks"],  # the registry and the Task protocol
  ["measure", "deconvnet"],  # what a trained run shows: its generators measured, its classifier seen inside
  ["eval_loop"],
  ["cli"],
  ["train", "evaluate", "visualize", "prepare"],  # the commands: nothing imports them, except an experiment
  # The experiments, on top of everything: the library never imports them.
  [
    *("experiments", "experiments.speed", "experiments.speed.timing"),
    *("experiments.upsampling", "experiments.upsampling.stats", "experiments.upsampling.variants"),
    "experiments.upsampling.figures",
  ],
  [
    *("experiments.speed.train_steps", "experiments.speed.primitives"),
    *("experiments.upsampling.checkerboard_check", "experiments.upsampling.report"),
  ],
  ["experiments.speed.op_profile"],
  # The experiments' commands; the up-sampling study is a driver, like a notebook: it runs train once per variant.
  ["experiments.speed.benchmark", "experiments.upsampling.study"],
  ["experiments.speed.__main__", "experiments.upsampling.__main__"],
]
PACKAGE = pathlib.Path(REPO) / "deconv_jax"


FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}


def module_name(path: pathlib.Path) -> str:
  """``deconv_jax/tasks/gan.py`` -> ``tasks.gan``; ``tasks/__init__.py`` -> ``tasks``; ``deconv_jax`` -> ``""``."""
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _ours(dotted: str) -> str | None:
  """``deconv_jax.tasks.gan`` -> ``tasks.gan``, ``deconv_jax`` -> ``""``; None for anything not ours."""
  if dotted == "deconv_jax" or dotted.startswith("deconv_jax."):
    return dotted.removeprefix("deconv_jax").removeprefix(".")
  return None


def imported(name: str) -> set[str]:
  """Our modules that module ``name`` imports, anywhere in it: ``from deconv_jax.tasks import gan`` -> ``tasks.gan``."""
  path = MODULES[name]
  full = ".".join(filter(None, ["deconv_jax", name]))
  package = full if path.name == "__init__.py" else full.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {t for alias in node.names if (t := _ours(alias.name)) is not None}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: the package, up level - 1
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = ".".join(filter(None, [anchor, base]))
      if (ours := _ours(base)) is None:
        continue
      for alias in node.names:
        sub = ".".join(filter(None, [ours, alias.name]))
        found.add(sub if sub in MODULES else ours)
  return found


def test_every_module_is_on_exactly_one_floor():
  listed = [name for names in FLOORS for name in names]
  assert len(listed) == len(set(listed)), "a module is on two floors"
  assert sorted(listed) == sorted(m for m in MODULES if m), "FLOORS and deconv_jax/ differ"


def test_the_package_itself_imports_nothing_of_ours():
  assert imported("") == set()


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m))
def test_imports_point_down(name):
  upward = [f"{t} (floor {FLOOR[t] + 1})" for t in sorted(imported(name)) if FLOOR[t] >= FLOOR[name]]
  assert not upward, f"{name} (floor {FLOOR[name] + 1}) imports {', '.join(upward)}"
