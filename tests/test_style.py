"""The house style is enforced: ruff lint and ruff format, as configured in pyproject.toml."""

import shutil
import subprocess

import pytest
from conftest import REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
  ruff = shutil.which("ruff")
  assert ruff, "ruff is a test dependency: pip install -e '.[test]'"
  result = subprocess.run([ruff, *command], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
