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
PACKAGE = ROOT / "hsm_notebook"
CORE = PACKAGE / "core"
FORBIDDEN = ("hsm_notebook.sources", "hsm_notebook.ui")

#: The layers, lowest first: a module imports only from its own layer or those below it.
LAYERS = [
    ("bottom", ("hsm_notebook._lazy", "hsm_notebook.metrics", "hsm_notebook.runner", "hsm_notebook.core.model",
                "hsm_notebook.core._loop")),
    ("spec", ("hsm_notebook.core.spec",)),
    ("base", ("hsm_notebook.core.base",)),
    ("ledger", ("hsm_notebook.core.ledger",)),
    ("engine", ("hsm_notebook.core.engine",)),
    ("sweep", ("hsm_notebook.core.sweep", "hsm_notebook.core.launch", "hsm_notebook.core")),
    ("sources", ("hsm_notebook.sources", "hsm_notebook.search")),
    ("front", ("hsm_notebook.ui", "hsm_notebook.cli", "hsm_notebook.__main__", "hsm_notebook")),
]
#: Sources build on the ABC and its toolkit, never on the ledger or the engine.
SOURCES_MAY_NOT = ("ledger", "engine", "sweep")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """``(line, module, lazy)`` for every runtime import statement in ``path`` (TYPE_CHECKING blocks
    left out): relative imports resolved against the file's own package, ``from X import y`` naming
    ``X.y`` when that is a module; lazy = inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    lazy_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if node.lineno in skip if hasattr(node, "lineno") else True:
            continue
        lazy = node.lineno in lazy_lines
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, lazy) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if _is_module(f"{module}.{a.name}")]
            found += [(node.lineno, m, lazy) for m in (subs or [module])]
    return found


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    return rank


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_core_imports_no_source_and_no_widget():
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted(CORE.rglob("*.py")) for line, module, _ in imports(path)
                 if module.startswith(FORBIDDEN)]
    assert not offenders, "core must not import sources/ or ui/ (use core.registry):\n" + "\n".join(offenders)


def test_imports_only_go_down_the_layers():
    """model <- spec <- base (the ABC and toolkit) <- ledger <- engine <- Sweep <- sources <- ui/cli,
    counting imports inside functions too; sources never reach the ledger or the engine."""
    offenders = []
    for name, path in sorted(package_modules().items()):
        mine = layer_of(name)
        assert mine >= 0, f"{name} is in no layer: add it to LAYERS"
        for line, module, _ in imports(path):
            if not module.startswith("hsm_notebook"):
                continue
            theirs = layer_of(module)
            if theirs > mine or (LAYERS[mine][0] == "sources" and LAYERS[theirs][0] in SOURCES_MAY_NOT):
                offenders.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[mine][0]}) imports {module} "
                                 f"({LAYERS[theirs][0]})")
    assert not offenders, "imports must go down the layers:\n" + "\n".join(offenders)


def test_no_import_cycle_between_modules():
    """No cycle among the modules' import-time imports.  (One import inside a function stays
    within its layer: ParameterSpace.from_yaml reads a sweep file through spec.config.)"""
    modules = package_modules()
    graph = {name: {m for _, m, lazy in imports(path) if not lazy and m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(trail[trail.index(nxt):] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if nxt not in state and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    for name in sorted(graph):
        if name not in state and visit(name, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_check_sees_relative_imports_and_cycles(tmp_path, monkeypatch):
    pkg = PACKAGE / "core" / "spec"
    bad = pkg / "_layering_probe.py"
    bad.write_text("def f():\n    from ...sources import local\n    from ..engine import manager\n")
    try:
        found = {m for _, m, _ in imports(bad)}
        assert "hsm_notebook.sources.local" in found and "hsm_notebook.core.engine.manager" in found
        assert layer_of("hsm_notebook.core.engine.manager") > layer_of(module_name(bad))
    finally:
        bad.unlink()


def test_a_local_sweep_does_not_import_asyncssh(workdir):
    script = textwrap.dedent(
        """
        import sys
        import hsm_notebook
        from hsm_notebook import Sweep, LocalComputeSource, ParameterSpace
        sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"],
                      [LocalComputeSource(max_parallel_jobs=2)], poll_interval=0.1).run()
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


def test_the_results_view_draws_with_plotly_and_without_matplotlib(monkeypatch, workdir):
    """Charts are Plotly FigureWidgets (issue 22): matplotlib is not imported to draw them."""
    from hsm_notebook import ParameterSpace, Sweep
    from hsm_notebook.ui.results_view import ResultsView

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing matplotlib now raises ImportError
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], workdir=workdir, poll_interval=0.1).run()
    view = ResultsView()
    view.show(sweep)
    view.view.value = "slice"
    assert type(view.chart.widget).__name__ == "FigureWidget" and "3</b> completed" in view.page_label.value
    assert [len(t["x"]) for t in view.chart.traces] == [3]


def test_the_package_needs_no_plotting_library():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("matplotlib") for d in project["dependencies"])
    assert not any(d.startswith("matplotlib") for d in project["optional-dependencies"]["panel"])
