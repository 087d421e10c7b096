"""The Binder files install the package in a fresh virtual environment, and the quickstart runs there."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_binder_files_install_and_the_quickstart_runs(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    repo = tmp_path / "repo"  # repo2docker works in a copy of the repository
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", "sweeps", "__pycache__", "*.egg-info",
                                                              ".hypothesis", "artifacts"))
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", "binder/requirements.txt"], cwd=repo, check=True, timeout=900)
    subprocess.run(["bash", "binder/postBuild"], cwd=repo, check=True, timeout=600,
                   env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin"})
    out = subprocess.run([python, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--output",
                          str(tmp_path / "ran.ipynb"), "notebooks/01_quickstart.ipynb"],
                         cwd=repo, capture_output=True, text=True, timeout=600,
                         env={"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    ran = (tmp_path / "ran.ipynb").read_text()
    assert "{'COMPLETED': 12}" in ran and "diverged at lr=0.01" in ran
    where = subprocess.run([python, "-c", "import hsm_notebook; print(hsm_notebook.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(env_dir)), where  # the package came from the Binder install, not this machine
