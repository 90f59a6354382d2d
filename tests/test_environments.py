"""The environments the package is tested in, and the install that keeps Colab's jax.

``pyproject.toml`` declares floors; ``constraints.txt`` (the pinned set) and ``constraints-colab.txt``
(Colab's runtime) are the two environments CI installs. A floor is only as good as the environment that
installs it, so every floor is the lowest version one of the two constraint files pins.
"""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import tomllib

import pytest
from conftest import REPO

CONSTRAINT_FILES = ("constraints.txt", "constraints-colab.txt")


def canonical(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def pins(filename: str) -> dict[str, str]:
  """``{canonical name: version}`` of the ``name==version`` lines of a constraints file."""
  with open(os.path.join(REPO, filename)) as f:
    return {canonical(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)$", f.read(), re.M)}


def declared() -> dict[str, str]:
  """``{canonical name: specifier}`` of every dependency in pyproject.toml, optional ones included."""
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
  return {canonical(m[1]): m[2] for m in (re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", r) for r in requirements)}


def version_key(version: str) -> tuple:
  """Orders release versions like pip does for the ones used here (``2.13.0+cpu`` sorts as ``2.13.0``)."""
  return tuple(int(part) for part in re.match(r"[\d.]+", version)[0].strip(".").split("."))


@pytest.mark.parametrize("name", sorted(declared()))
def test_each_floor_is_a_version_ci_installs(name):
  specifier = declared()[name]
  tested = [p[name] for p in map(pins, CONSTRAINT_FILES) if name in p]
  assert tested, f"{name}: no constraints file pins it, so no environment tests its floor"
  lowest = min(tested, key=version_key)
  floor = re.fullmatch(r"(>=|==)([\w.]+)", specifier)
  assert floor, f"{name}{specifier}: declare a floor (>=) or, where a newer release changes results, a pin (==)"
  assert version_key(floor[2]) == version_key(lowest), (
    f"{name}{specifier}: the lowest version CI installs is {lowest}; make that the floor"
  )


def test_colab_constraints_hold_colabs_jax_and_flax():
  colab = pins("constraints-colab.txt")
  assert (colab["jax"], colab["jaxlib"], colab["flax"]) == ("0.7.2", "0.7.2", "0.11.2")


def test_installed_versions_are_the_constraints():
  """Under .ci/run, the environment holds exactly what its constraints file pins (nothing upgraded it)."""
  filename = os.environ.get("DECONV_JAX_CONSTRAINTS")
  if not filename:
    pytest.skip("DECONV_JAX_CONSTRAINTS names the environment's constraints file (.ci/run sets it)")
  wrong = {}
  for name, version in pins(filename).items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      continue  # a constraint only bounds what is installed
    if installed != version and not (installed.startswith(f"{version}+") and "+" not in version):
      wrong[name] = (installed, version)  # (==2.13.0 admits a local build such as 2.13.0+cpu, as pip's does)
  assert not wrong, f"installed versions differ from {filename}: {wrong}"


def load_install_script():
  spec = importlib.util.spec_from_file_location("colab_install", os.path.join(REPO, "colab", "install.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_install_keeps_exactly_the_jax_family():
  install = load_install_script()
  kept = ["jax", "jaxlib", "jax-cuda12-plugin", "jax_cuda12_pjrt", "jax-rocm7-plugin", "libtpu", "libtpu-nightly"]
  assert all(map(install.is_kept, kept))
  assert not any(map(install.is_kept, ["flax", "jaxtyping", "jax-md", "optax", "numpy", "chex"]))
  assert set(install.kept_versions()) == {"jax", "jaxlib"}  # this environment's jax family


def test_the_install_passes_the_installed_jax_to_pip_as_constraints(monkeypatch, capsys):
  install = load_install_script()
  calls = []

  def pip(command, **kwargs):
    with open(command[command.index("-c") + 1]) as f:
      calls.append((command, f.read()))
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(install.subprocess, "run", pip)
  kept = install.install_keeping_jax("some/repo")
  ((command, constraints),) = calls
  jax_version = importlib.metadata.version("jax")
  assert command[-2:] == ["-e", f"{os.path.abspath('some/repo')}[notebooks]"]
  assert f"jax=={jax_version}\n" in constraints and f"jaxlib=={importlib.metadata.version('jaxlib')}\n" in constraints
  assert kept["jax"] == jax_version and f"kept jax {jax_version}" in capsys.readouterr().out


def test_a_refused_install_says_what_it_kept(monkeypatch):
  install = load_install_script()
  refusal = "ERROR: Cannot install deconv_jax because these package versions have conflicting dependencies."
  monkeypatch.setattr(install.subprocess, "run", lambda c, **kw: subprocess.CompletedProcess(c, 1, "", refusal))
  with pytest.raises(RuntimeError, match=f"(?s){refusal}.*could not be installed beside the installed jax"):
    install.install_keeping_jax("some/repo")
