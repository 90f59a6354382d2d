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


def test_ci_runs_the_readme_test_commands():
  """One command per environment in the README's "Tests" block, each run by `.ci/run` exactly as written."""
  with open(os.path.join(REPO, "README.md")) as f:
    commands = re.search(r"## Tests\n\n```bash\n(.+?)\n```", f.read(), re.S).group(1).splitlines()
  with open(os.path.join(REPO, ".ci", "run")) as f:
    ci = re.findall(r"# The README's test command for this environment, exactly:\n\s*(.+)\n", f.read())
  assert ci == commands and len(commands) == 2
