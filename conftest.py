"""Markers for every collected test, so ``pytest -m unit`` runs without any server.

A test is ``ssh`` / ``slurm`` / ``sge`` / ``browser`` when it needs that server: by a marker of its own,
by the server fixtures it asks for, by the source kind it is parametrised with (the contract
suite's ``make_source[ssh]``), or by the folder or module that starts the server itself.
A test that needs no server but runs real jobs on this machine (it asks for the ``workdir``
project or the ``sweeps`` fixture, or its module makes environments) is ``local``; everything else
is ``unit``, quick and free of processes, so ``pytest -m unit`` is the fast check.  Notebooks are
``notebook``; the one that uses the remote test servers is ``ssh`` and ``slurm`` too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SERVER_MARKS = ("ssh", "slurm", "sge", "browser")
_FIXTURE_PREFIXES = {"ssh": ("ssh_host", "ssh_server"), "slurm": ("slurm",), "sge": ("sge",)}
#: modules that start a server themselves rather than through a fixture
_MODULE_MARKS = {
    "test_sshd_fixture.py": ("ssh",),
    "test_slurm_fixture.py": ("slurm",),
    "test_slurm_faults.py": ("slurm",),
    "02_remote_machines.ipynb": ("ssh", "slurm"),
}
#: no server, but real jobs or environments on this machine
_LOCAL_FIXTURES = {"workdir", "sweeps"}
_LOCAL_MODULES = {"test_binder.py"}


def _server_marks(item: pytest.Item) -> set[str]:
    marks = {m.name for m in item.iter_markers() if m.name in SERVER_MARKS}
    path = Path(str(item.fspath))
    marks.update(_MODULE_MARKS.get(path.name, ()))
    if "browser" in path.parts:
        marks.add("browser")
    names = set(getattr(item, "fixturenames", ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        names.update(str(v) for v in callspec.params.values() if isinstance(v, str))
    for mark, prefixes in _FIXTURE_PREFIXES.items():
        if any(n == mark or n.startswith(prefixes) for n in names):
            marks.add(mark)
    return marks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        marks = _server_marks(item)
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker("notebook")
        for mark in marks:
            item.add_marker(mark)
        if marks or str(item.fspath).endswith(".ipynb"):
            continue
        if (_LOCAL_FIXTURES & set(getattr(item, "fixturenames", ())) or Path(str(item.fspath)).name in _LOCAL_MODULES
                or item.get_closest_marker("local")):
            item.add_marker("local")
        else:
            item.add_marker("unit")
