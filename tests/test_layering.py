"""Layering: core imports no concrete source and no widget; a local user never pays for
asyncssh; matplotlib is the panel's optional extra."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path



ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "hsm_notebook" / "core"
FORBIDDEN = ("hsm_notebook.sources", "hsm_notebook.ui")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names (anywhere, functions included),
    relative imports resolved against ``hsm_notebook.core``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "hsm_notebook.core".split(".")[: 3 - node.level]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def test_core_imports_no_source_and_no_widget():
    offenders = [f"{path.name}:{line} imports {module}"
                 for path in sorted(CORE.glob("*.py")) for line, module in imported_modules(path)
                 if module.startswith(FORBIDDEN)]
    assert not offenders, "core must not import sources/ or ui/ (use core.registry):\n" + "\n".join(offenders)


def test_the_check_sees_relative_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ..sources import LocalComputeSource\n    from .. import ui\n")
    modules = [m for _, m in imported_modules(bad)]
    assert "hsm_notebook.sources" in modules and "hsm_notebook.ui" in modules


def test_a_local_sweep_does_not_import_asyncssh(workdir):
    script = textwrap.dedent(
        """
        import sys
        import hsm_notebook
        from hsm_notebook import Sweep, LocalComputeSource, ParameterSpace
        sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"], [LocalComputeSource(max_parallel_jobs=2)],
                      poll_interval=0.1).run()
        assert sweep.counts() == {"COMPLETED": 2}, sweep.counts()
        assert sorted(sweep.results()["score"]) == [2.0, 4.0]
        again = Sweep.attach(sweep.directory, resume=False)   # rebuilt from its record
        assert type(again.sources[0]).__name__ == "LocalComputeSource"
        Sweep(ParameterSpace(grid={"x": [3]}), ["python", "job.py"], poll_interval=0.1).run()  # the default source
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("asyncssh", "matplotlib", "ipywidgets")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_the_results_view_draws_without_a_plotting_library(monkeypatch, workdir):
    """Charts are SVG text: no matplotlib (nor any plotting library) is imported to draw them."""
    from hsm_notebook import ParameterSpace, Sweep
    from hsm_notebook.ui.results_view import ResultsView

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing matplotlib now raises ImportError
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    view = ResultsView()
    view.show(sweep)
    assert view.scatter.value.startswith("<svg") and "3</b> completed" in view.page_label.value


def test_the_package_needs_no_plotting_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])
    assert not any(d.startswith("matplotlib") for d in project["optional-dependencies"]["panel"])
