"""The notebooks in ``colab/``: executed top to bottom in their small setting, and kept small and consistent.

Policy: notebooks are committed without outputs (outputs are made by running them), so a
review reads code, not pixels. Each one's setup cell has one ``QUICK = True|False`` line;
the test forces ``True``. ``NOTEBOOK_OUTPUT_DIR=DIR`` keeps the executed copies (with
their figures) in ``DIR``.
"""

import os
import re
import tomllib

import nbformat
import pytest
from conftest import REPO

COLAB = os.path.join(REPO, "colab")
NOTEBOOKS = sorted(n for n in os.listdir(COLAB) if n.endswith(".ipynb"))
# What each notebook promises to draw: at least this many figures.
FIGURES = {
  "01_deconv_is_the_adjoint.ipynb": 2,
  "02_train_and_look_inside.ipynb": 3,
  "03_generators_and_checkerboards.ipynb": 5,
  "04_deconvnet_on_your_model.ipynb": 1,
}
QUICK_LINE = re.compile(r"^QUICK = (True|False)\b", re.M)


def repository_url():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]["urls"]["Repository"]


def test_the_notebooks_are_there():
  assert sorted(FIGURES) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs_and_small(name):
  path = os.path.join(COLAB, name)
  assert os.path.getsize(path) < 1_000_000
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, f"{name}: clear the outputs before committing"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_badge_and_install_cell_use_the_repository_url(name):
  url = repository_url()
  nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
  title, setup = nb.cells[0].source, nb.cells[1].source
  assert title.startswith("# "), "the first cell is a title"
  slug = url.removeprefix("https://github.com/")
  assert f"(https://colab.research.google.com/github/{slug}/blob/main/colab/{name})" in title
  assert f'REPO_URL = "{url}"' in setup and '"google.colab" in sys.modules' in setup
  assert len(QUICK_LINE.findall(setup)) == 1
  # Installed by colab/install.py, which keeps Colab's jax, jaxlib and accelerator plugin; never by a bare pip.
  assert 'install_keeping_jax("deconv_jax_repo")' in setup
  assert "pip install" not in setup
  assert "jax_platforms" not in "".join(c.source for c in nb.cells).lower(), "no forcing the CPU: Colab has GPUs"


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_runs_top_to_bottom_in_the_small_setting(name):
  from nbclient import NotebookClient

  nb = nbformat.read(os.path.join(COLAB, name), as_version=4)
  nb.cells[1].source = QUICK_LINE.sub("QUICK = True", nb.cells[1].source)
  # Jupyter runs a notebook in its own folder; a failing cell raises CellExecutionError here.
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": COLAB}}).execute()
  if out_dir := os.environ.get("NOTEBOOK_OUTPUT_DIR"):
    os.makedirs(out_dir, exist_ok=True)
    nbformat.write(nb, os.path.join(out_dir, name))
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
  assert len(images) >= FIGURES[name], f"{name} drew {len(images)} figures"
