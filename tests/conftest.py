"""Shared fixtures.  Servers (sshd, Slurm, Grid Engine, JupyterLab) are started once per session
by the fixtures that need them; a missing server fails the test loudly."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.servers.fixtures", "tests.servers.slurm_fixtures", "tests.servers.sge_fixtures"]

#: A job script used across tests: writes metrics, can fail, sleep or append to a file.
JOB = textwrap.dedent(
    '''
    import json, os, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    if "append" in args:
        with open(args["append"], "a") as f:
            f.write(os.environ["HSM_TASK_ID"] + "\\n")
    time.sleep(float(args.get("sleep", 0)))
    if args.get("argv_out"):
        with open(os.path.join(os.environ["HSM_TASK_DIR"], "argv.json"), "w") as f:
            env = {k: v for k, v in os.environ.items() if k.startswith(("HSM_", "WANDB_"))}
            json.dump({"argv": sys.argv[1:], "env": env}, f)
    code = int(args.get("exit", 0))
    if os.path.exists(args.get("fail_flag", "/nonexistent/flag")):
        code = 4
    if code:
        print("something went wrong in task", args.get("x"), file=sys.stderr)
        sys.exit(code)
    if args.get("bad_metrics") == "true":
        open(os.path.join(os.environ["HSM_TASK_DIR"], "metrics.json"), "w").write("{not json")
    else:
        from hsm_notebook.metrics import log_metrics
        log_metrics(score=float(args.get("x", 0)) * 2, name="t" + args.get("x", "0"))
    '''
)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A project folder holding ``job.py``; sweeps go under it."""
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


@pytest.fixture(autouse=True)
def _sweeps_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HSM_SWEEPS_DIR", str(tmp_path / "sweeps"))


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def pytest_report_header(config) -> str:
    return f"hsm_notebook tests on {os.uname().nodename}, python {sys.version.split()[0]}"


@pytest.fixture()
def panels():
    """Panels a test made (append them): closed at the end, so no refresh thread outlives the test."""
    made = []
    yield made
    for panel in made:
        panel.close()


@pytest.fixture()
def sweeps():
    """Sweeps a test started (append them): cancelled and waited for if still running at the end."""
    made = []
    yield made
    for sweep in made:
        if sweep.running:
            sweep.cancel()
            sweep.wait(timeout=60)


@pytest.fixture()
def notebook_module(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A ``helpers.py`` next to the "notebook" (a folder on sys.path, as the kernel's cwd is), imported
    here; and a project folder holding ANOTHER ``helpers.py`` the jobs run in (``workdir=``)."""
    notebook, project = tmp_path / "nb", tmp_path / "project"
    notebook.mkdir()
    project.mkdir()
    (notebook / "helpers.py").write_text("FACTOR = 10\n\ndef score(x):\n    return x * FACTOR\n")
    (project / "helpers.py").write_text("def score(x):\n    return -1\n")
    sys.path.insert(0, str(notebook))
    sys.modules.pop("helpers", None)
    try:
        yield importlib.import_module("helpers"), project
    finally:
        sys.path.remove(str(notebook))
        sys.modules.pop("helpers", None)
