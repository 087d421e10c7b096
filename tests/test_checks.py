"""The package's own checks (ruff and mypy run in scripts/test.sh before pytest): the public seams used
across layers (no private alias left), one spelling of the tasks folder (``JobPaths``), benches
that name the package's modules by path name ones that exist, and a core docstring that maps the
layers that are there."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import hsm_notebook.core
from hsm_notebook.core.engine.manager import DistributedJobManager
from hsm_notebook.core.ledger.views import SweepViews
from hsm_notebook.core.spec.jobpaths import TASKS_DIR, JobPaths

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hsm_notebook"
#: The engine, ledger, specs, ABC, Sweep, widgets and the front: every module but the concrete sources.
CHECKED = [PACKAGE / "core", PACKAGE / "ui", PACKAGE / "runner.py", PACKAGE / "metrics.py", PACKAGE / "cli.py"]


def test_sweep_uses_the_managers_public_source_lookup() -> None:
    assert not hasattr(DistributedJobManager, "_need"), "the private alias of require_source is gone"
    assert callable(DistributedJobManager.require_source)
    tree = ast.parse((PACKAGE / "core" / "sweep.py").read_text())
    private = sorted({n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and isinstance(n.value, ast.Name) and n.value.id == "manager" and n.attr.startswith("_")})
    assert private == [], f"core/sweep.py reads the manager's private names {private}"


def _joins_tasks_by_hand(path: Path) -> list[int]:
    """Lines where ``"tasks"`` is joined to a path (``x / "tasks"``, ``os.path.join(.., "tasks")``)."""
    tree = ast.parse(path.read_text(), str(path))

    def is_tasks(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value == TASKS_DIR

    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and (is_tasks(node.left)
                                                                              or is_tasks(node.right)):
            lines.append(node.lineno)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
              and any(is_tasks(a) for a in node.args)):
            lines.append(node.lineno)
    return lines


def test_the_tasks_folder_is_joined_only_by_jobpaths() -> None:
    found = {str(p.relative_to(ROOT)): lines for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "jobpaths.py" and (lines := _joins_tasks_by_hand(p))}
    assert found == {}, f"join the tasks folder with JobPaths.local/tasks_dir/remote, not by hand: {found}"


def test_the_hand_join_check_sees_both_spellings(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text('import os\nfrom pathlib import Path\na = Path("x") / "tasks"\nb = os.path.join("x", "tasks")\n'
                      'c = "tasks"\n')
    assert _joins_tasks_by_hand(sample) == [3, 4]


def test_a_tasks_log_and_return_value_are_found_through_jobpaths(tmp_path: Path) -> None:
    class Known(SweepViews):
        """A FAKE ledger: one task, attempted twice (only the paths are asked for)."""

        def __init__(self) -> None:
            self._record = {"function": {"name": "f"}}

        @property
        def directory(self) -> Path:
            return tmp_path

        def task(self, task_id: str) -> dict:
            return {"job_name": f"{task_id}-2", "attempt": 2, "state": "COMPLETED", "error": None}

    views = Known()
    assert views.log_path("abc", "stdout") == JobPaths.local(tmp_path, "abc-2").stdout
    assert views.log_path("abc", "slurm", attempt=1) == JobPaths.local(tmp_path, "abc-1").scheduler
    paths = JobPaths.local(tmp_path, "abc-2")
    paths.folder.mkdir(parents=True)
    import cloudpickle

    paths.result.write_bytes(cloudpickle.dumps({"answer": 42}))
    assert views.result("abc") == {"answer": 42}


def test_benches_name_modules_that_exist() -> None:
    missing = []
    for bench in sorted((ROOT / "bench").glob("*.py")):
        text = bench.read_text()
        for path in re.findall(r"[\"'](core/[\w/]+\.py)[\"']", text):
            if not (PACKAGE / path).is_file():
                missing.append(f"{bench.name}: {path}")
        for module in re.findall(r"\bhsm_notebook(?:\.\w+)+", text):
            base = ROOT / module.replace(".", "/")
            parent = base.parent
            if not (base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()
                    or parent.with_suffix(".py").is_file()):  # ``module.attribute``
                missing.append(f"{bench.name}: {module}")
    assert missing == [], f"benches name modules that are not in the package: {missing}"


def test_the_distributed_bench_starts_and_its_manager_layer_exists() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "distributed.py"), "--help"], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]


def test_the_core_docstring_maps_every_layer_there_is() -> None:
    doc = hsm_notebook.core.__doc__ or ""
    layers = sorted(p.name for p in (PACKAGE / "core").iterdir() if (p / "__init__.py").is_file())
    assert layers == ["base", "engine", "ledger", "model", "spec"]
    unnamed = [name for name in layers if f"``{name}/``" not in doc]
    assert unnamed == [], f"hsm_notebook/core/__init__.py's docstring does not describe {unnamed}"
    assert "test_layering" in doc
