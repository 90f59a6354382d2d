"""The house style is enforced: ruff lint and ruff format, as configured in pyproject.toml."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
  result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
  with open(os.path.join(REPO, "README.md")) as f:
    command = re.search(r"## Tests\n\n```bash\n(.+?)\n```", f.read()).group(1)
  with open(os.path.join(REPO, ".ci", "run")) as f:
    lines = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  assert lines[-1] == command
