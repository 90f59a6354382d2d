"""Install deconv_jax into this Python, keeping its jax, jaxlib, accelerator plugins and libtpu as they are.

The notebooks' setup cell calls `install_keeping_jax` in Colab; from a shell: ``python install.py REPO_DIR``.
Colab ships a jaxlib built to match its CUDA plugin (GPU runtimes) or libtpu (TPU runtimes); a jaxlib that
no longer matches its plugin leaves the notebook on the CPU, or failing. So the installed versions of those
distributions are passed to pip as constraints: if deconv_jax ever needs another jax, pip refuses at once
with a conflict, instead of replacing jax and silently dropping the accelerator. Everything else follows
pip's usual rule: an installed version that satisfies the package's range is kept.

Standard library only: it runs before the package is installed.
"""

import importlib.metadata
import os
import subprocess
import sys
import tempfile


def is_kept(name: str) -> bool:
  """Whether distribution ``name`` is one that must stay: jax, jaxlib, their plugins, libtpu."""
  name = name.lower().replace("_", "-")
  return name in ("jax", "jaxlib") or name.startswith(("jax-cuda", "jax-rocm", "libtpu"))


def kept_versions() -> dict[str, str]:
  """``{distribution: version}`` of every installed distribution that `is_kept`."""
  return {d.metadata["Name"]: d.version for d in importlib.metadata.distributions() if is_kept(d.metadata["Name"])}


def install_keeping_jax(repo: str, extras: str = "notebooks") -> dict[str, str]:
  """``pip install -e REPO[EXTRAS]`` with `kept_versions` as constraints; returns what it kept.

  Raises RuntimeError, with pip's output, if pip fails (for example: the package needs another jax than
  the installed one) or if a kept version changed anyway.
  """
  before = kept_versions()
  with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
    f.writelines(f"{name}=={version}\n" for name, version in sorted(before.items()))
  try:
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "-c", f.name, "-e", f"{os.path.abspath(repo)}[{extras}]"]
    result = subprocess.run(pip, capture_output=True, text=True, check=False)
  finally:
    os.remove(f.name)
  if result.returncode != 0:
    raise RuntimeError(
      f"{result.stdout}{result.stderr}\ndeconv_jax could not be installed beside the installed {_listed(before)}: "
      "pip's message above names the package that needs another version"
    )
  if (after := kept_versions()) != before:
    raise RuntimeError(f"installing deconv_jax changed {_listed(before)} into {_listed(after)}")
  print(f"deconv_jax installed; kept {_listed(before)}" if before else "deconv_jax installed (no jax was installed)")
  return before


def _listed(versions: dict[str, str]) -> str:
  return ", ".join(f"{name} {version}" for name, version in sorted(versions.items())) or "nothing"


if __name__ == "__main__":
  if len(sys.argv) not in (2, 3):
    sys.exit(f"usage: {os.path.basename(sys.argv[0])} REPO_DIR [EXTRAS, default notebooks]")
  try:
    install_keeping_jax(*sys.argv[1:])
  except RuntimeError as e:
    sys.exit(str(e))
