"""The headless entry point: the README's first command runs the bundled example."""

from __future__ import annotations

import subprocess
import sys

from hsm_notebook import Sweep


def test_python_m_hsm_notebook_runs_the_bundled_example(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hsm_notebook"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "12/12 done  COMPLETED=12" in out.stdout
    assert "Results (12 completed)" in out.stdout and "val_loss" in out.stdout
    (directory,) = (tmp_path / "sweeps").iterdir()
    results = Sweep.attach(directory, resume=False).results()
    assert len(results) == 12 and results["val_loss"].dtype == "float64"
    assert results.loc[results["val_loss"].idxmin(), "lr"] == 0.003


def test_status_and_failed_tasks_are_reported(tmp_path):
    (tmp_path / "train.py").write_text("import sys\nsys.exit('boom: ' + sys.argv[1])\n")
    (tmp_path / "sweep.yaml").write_text("command: python train.py\nsweep:\n  grid:\n    a: [1, 2]\n")
    out = subprocess.run([sys.executable, "-m", "hsm_notebook", "run", "sweep.yaml", "--dir", "s", "--parallel", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "2 task(s) did not complete" in out.stdout and "boom: a=1" in out.stdout
    status = subprocess.run([sys.executable, "-m", "hsm_notebook", "status", "s"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and status.stdout.count("FAILED") == 2


def test_bad_file_is_one_clear_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("sweep:\n  grid:\n    a: 3\ncommand: [python, x.py]\n")
    out = subprocess.run([sys.executable, "-m", "hsm_notebook", "run", "bad.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: grid.a: must be a list of values such as [0.1, 0.01], got 3 "
                                  "(for a single value use fixed:)")
