"""Function sweeps: clear errors before any job starts, the function sent once per sweep, a
module missing where it runs named in the task, and a crash then attach from a process that never
defined the function.  (What every source does with a function: tests/contract/test_functions.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, HsmError, ParameterSpace, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.spec.environment import _MARK
from tests.contract.conftest import ssh_source
from tests.helpers import until

LOCK = threading.Lock()


@pytest.mark.parametrize("what, make", [
    ("lock", lambda: threading.Lock()),
    ("generator", lambda: (i for i in range(3))),
    ("socket", lambda: socket.socket()),
])
def test_an_unpicklable_closure_is_named_before_anything_is_written(workdir, what, make):
    thing = make()

    def uses_it(x):
        return repr(thing), x

    with pytest.raises(ConfigError) as err:
        Sweep(ParameterSpace(grid={"x": [1]}), uses_it, workdir=workdir)
    assert "'thing'" in str(err.value) and "create it inside the function" in str(err.value)
    assert not (workdir / "sweeps").exists() or not any((workdir / "sweeps").iterdir())


def test_a_module_global_that_cannot_be_sent_is_named(workdir):
    def locked(x):
        with LOCK:
            return x

    with pytest.raises(ConfigError, match="the global 'LOCK'"):
        Sweep(ParameterSpace(grid={"x": [1]}), locked, workdir=workdir)


@pytest.fixture()
def fake_old_python():
    """A fake ``python3`` the test host's user can run, which reports Python 3.9.18 to the setup probe."""
    folder = Path(tempfile.mkdtemp(prefix="hsmt-fake-python-"))
    fake = folder / "python3"
    fake.write_text(f'#!/bin/sh\necho "{_MARK}python=3.9.18"\n')
    folder.chmod(0o755)
    fake.chmod(0o755)
    yield str(fake)
    shutil.rmtree(folder)


def test_a_remote_python_of_another_version_is_refused_at_setup(workdir, ssh_host, fake_old_python):
    source = ssh_source(ssh_host, "old-python", 1, python=fake_old_python, remote_root="~/hsm-fn-old")
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), lambda x: x, [source], workdir=workdir, poll_interval=0.2,
                  stall_timeout=1)
    with pytest.raises(HsmError) as err:
        sweep.run()
    here = "{}.{}".format(*sys.version_info[:2])
    assert "3.9.18" in str(err.value) and f"Python {here}" in str(err.value), str(err.value)
    assert sweep.counts() == {"PENDING": 1}  # nothing ran


def test_the_function_goes_once_per_sweep_and_a_missing_module_is_named(workdir, ssh_host):
    table = list(range(200_000))  # ~1 MB pickled

    def total(x):
        if x == 3:
            import hydra  # installed here, not for the test host's Python  # noqa: F401
        return {"y": x + len(table)}

    source = ssh_source(ssh_host, "fn-once", 3, remote_root="~/hsm-fn-once")
    sweep = Sweep(ParameterSpace(grid={"x": [0, 1, 2, 3]}), total, [source], workdir=workdir,
                  poll_interval=0.2).run()
    status = sweep.status().set_index("x")
    assert list(status["state"]) == ["COMPLETED"] * 3 + ["FAILED"]
    assert "ModuleNotFoundError: No module named 'hydra'" in status.loc[3, "error"]
    assert sorted(sweep.results()["y"]) == [200_000, 200_001, 200_002]
    run_sync(source.conn.connect())  # the sweep's end closed it
    found = run_sync(source.conn.run("find ~/hsm-fn-once -name function.pkl -printf '%s\\n'")).stdout.split()
    assert len(found) == 1 and int(found[0]) > 500_000  # one copy for the sweep
    argv = source.template.argv({"x": 1})
    assert len(json.dumps(argv)) < 200  # each task carries only its parameters
    run_sync(source.cleanup())


CONTROLLER = textwrap.dedent('''
    import sys, time
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep

    def work(x, log):
        with open(log, "a") as f:
            f.write(f"{x}\\n")
        time.sleep(0.5)
        return {"y": x * 2}

    directory, log = sys.argv[1:3]
    sweep = Sweep(ParameterSpace(grid={"x": list(range(6))}, fixed={"log": log}), work,
                  [LocalComputeSource(max_parallel_jobs=2)], directory=directory, poll_interval=0.1)
    print("started", flush=True)
    sweep.run()
''')


def test_sigkill_then_attach_from_a_process_that_never_defined_the_function(workdir):
    (workdir / "controller.py").write_text(CONTROLLER)
    directory, log = workdir / "sweeps" / "fn-crash", workdir / "ran.log"
    proc = subprocess.Popen([sys.executable, "controller.py", str(directory), str(log)], cwd=workdir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        until(lambda: log.exists() and len(log.read_text().split()) >= 3, timeout=60, what="some tasks ran")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(f'''
        from hsm_notebook import Sweep
        sweep = Sweep.attach({str(directory)!r})
        sweep.wait(timeout=120)
        print(sorted(sweep.results()["y"]))
    ''')], cwd=workdir, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[0, 2, 4, 6, 8, 10]"
    ran = log.read_text().split()
    assert sorted(ran) == [str(x) for x in range(6)], ran  # each task once
