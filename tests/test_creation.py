"""A sweep folder appears whole or not at all, and a refused change writes nothing.

Creation is killed with SIGKILL for real; refusals are tested against a live controller
in another process."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, Sweep, SweepLockedError
from tests.helpers import until

UNFINISHED = "unfinished sweep folder left by an interrupted Sweep(...)"
REDO = "delete it and create the sweep again"

CREATE = textwrap.dedent(
    """
    import sys
    from hsm_notebook import ParameterSpace, Sweep
    workdir, directory = sys.argv[1:3]
    space = ParameterSpace(grid={"a": list(range(400)), "b": list(range(500))})  # 200,000 tasks
    print("creating", flush=True)
    Sweep(space, ["python", "job.py"], workdir=workdir, directory=directory)
    print("created", flush=True)
    """
)

#: Two tasks no source can run (FAILED at once), two that fail and wait out a 10-minute backoff
#: (PENDING, nothing in flight): the controller lives on, idle, holding the lock.
CONTROLLER = textwrap.dedent(
    """
    import sys
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
    workdir, directory = sys.argv[1:3]
    sweep = Sweep(ParameterSpace(grid={"x": [0, 1, 2, 3]}, fixed={"exit": 3}), ["python", "job.py"],
                  [LocalComputeSource(max_parallel_jobs=4)], workdir=workdir, directory=directory,
                  poll_interval=0.2, requires=lambda p: {"gpus": 1} if p["x"] < 2 else None,
                  retry={"retry_failed": True, "max_attempts": 2, "backoff": 600})
    print("started", flush=True)
    sweep.run()
    print("finished", flush=True)
    """
)


def _small(workdir: Path, **kwargs) -> Sweep:
    return Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"], workdir=workdir, **kwargs)


def _is_helpful(exc: ConfigError) -> bool:
    text = str(exc)
    return (UNFINISHED in text and REDO in text) or "already holds a sweep; use Sweep.attach()" in text


def _ledger(directory: Path) -> tuple:
    with contextlib.closing(sqlite3.connect(directory / "ledger.sqlite")) as db:
        return (db.execute("SELECT * FROM tasks ORDER BY idx").fetchall(),
                db.execute("SELECT * FROM attempts ORDER BY task_id, attempt").fetchall(),
                db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                (directory / "sweep.yaml").read_text())


def test_sigkill_while_creating_leaves_no_half_made_folder(workdir):
    sweeps, target = workdir / "sweeps", workdir / "sweeps" / "big"
    (workdir / "create.py").write_text(CREATE)
    proc = subprocess.Popen([sys.executable, "create.py", str(workdir), str(target)], cwd=workdir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "creating"
        # killed while the ledger is being filled: the hidden build folder holds it, the folder is not
        # in place yet (the fill of 200,000 rows outlasts this check by far)
        until(lambda: sweeps.is_dir() and any((p / "ledger.sqlite").exists() for p in sweeps.iterdir()), 60,
              "the ledger being built", every=0.01)
        assert proc.poll() is None, "Sweep(...) returned before the kill: nothing was tested"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # whole or not at all under the sweep's name
    assert not target.exists() or {"ledger.sqlite", "sweep.yaml", "tasks"} <= {p.name for p in target.iterdir()}
    leftovers = sorted(sweeps.iterdir())
    assert leftovers
    for folder in leftovers:  # every folder left is named for what it is, by attach and by create
        for call in (lambda f=folder: Sweep.attach(f, resume=False), lambda f=folder: _small(workdir, directory=f)):
            try:
                call()
            except ConfigError as exc:
                assert _is_helpful(exc), str(exc)
    if not target.exists():
        with pytest.raises(ConfigError) as err:
            Sweep.attach(target, resume=False)
        assert f"{target} does not exist: " in str(err.value) and UNFINISHED in str(err.value)
        assert f"it was being built for {target}" in str(err.value)
    try:
        sweep = _small(workdir, directory=target)
    except ConfigError as exc:  # the advice, followed, works
        assert _is_helpful(exc), str(exc)
        shutil.rmtree(target)
        sweep = _small(workdir, directory=target)
    assert sweep.counts() == {"PENDING": 2}
    assert Sweep.attach(target, resume=False).counts() == {"PENDING": 2}


def test_folders_left_by_older_crashes_are_named(workdir):
    sweeps = workdir / "sweeps"
    half = sweeps / "half"  # an older version: the ledger written, sweep.yaml not yet
    half.mkdir(parents=True)
    sqlite3.connect(half / "ledger.sqlite").close()
    for call in (lambda: Sweep.attach(half), lambda: _small(workdir, directory=half)):
        with pytest.raises(ConfigError, match="directory: ") as err:
            call()
        assert f"{half} is an {UNFINISHED} (no sweep.yaml); {REDO}" in str(err.value)

    crashed = sweeps / ".gone.creating-0a1b2c3d"  # its builder died
    crashed.mkdir()
    sqlite3.connect(crashed / "ledger.sqlite").close()
    (crashed / "sweep.yaml").write_text("sweep_id: gone\n")
    for call in (lambda: Sweep.attach(crashed), lambda: _small(workdir, directory=crashed),
                 lambda: Sweep.attach(sweeps / "gone")):
        with pytest.raises(ConfigError) as err:
            call()
        assert UNFINISHED in str(err.value) and f"it was being built for {sweeps / 'gone'}" in str(err.value)
    assert _small(workdir, directory=sweeps / "gone").counts() == {"PENDING": 2}  # a new one is not in the way

    building = sweeps / ".busy.creating-00ff00ff"  # its builder is alive (here: this process holds its lock)
    building.mkdir()
    fd = os.open(building / ".controller.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"pid 4242 on {socket.gethostname()}".encode())
        with pytest.raises(ConfigError, match=f"being created right now by pid 4242 on {socket.gethostname()}; wait"):
            Sweep.attach(building)
    finally:
        os.close(fd)

    empty = sweeps / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="is an empty folder, not a sweep"):
        Sweep.attach(empty)


def test_an_existing_empty_folder_is_accepted_as_directory(workdir, monkeypatch):
    given = workdir / "mine"
    given.mkdir(mode=0o750)
    os.chmod(given, 0o750)
    sweep = _small(workdir, directory=given)
    assert sweep.directory == given and given.stat().st_mode & 0o777 == 0o750
    assert sweep.counts() == {"PENDING": 2}
    assert [p.name for p in workdir.iterdir() if p.name.startswith(".")] == []

    mount = workdir / "mount"  # where the OS refuses to rename onto it (a mount point), it is filled
    mount.mkdir()
    real = os.rename

    def rename(src, dst, *args, **kwargs):
        if Path(dst) == mount:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    assert _small(workdir, directory=mount).counts() == {"PENDING": 2}
    assert {p.name for p in mount.iterdir()} >= {"ledger.sqlite", "sweep.yaml", "tasks"}

    monkeypatch.undo()
    other = workdir / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files; give a new or an empty folder"):
        _small(workdir, directory=other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


def _not_json(p):
    return {"gpus": {1}}


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"space": ParameterSpace(grid={"x": [1]})}, None),  # the valid case, for contrast
        ({"space": ParameterSpace(grid={"x": [1]}, filter=lambda p: False)}, "space: the parameter space is empty"),
        ({"space": ParameterSpace(combinations=[{"x": 1}, {"x": 2}, {"x": 1}])}, "appears twice"),
        ({"requires": _not_json}, "requires: returned a dict that is not JSON for the task {'x': 1}"),
        ({"requires": lambda p: {"gpus"}}, "requires: returned a set for the task {'x': 1}"),
        ({"requires": lambda p: 1 / 0}, "division by zero"),
        ({"name": "../escaped"}, "name: must be 1 to 100 letters, digits, '.', '_' or '-'"),
        ({"name": "a/b"}, "name: must be 1 to 100 letters"),
        ({"name": ".."}, "name: must be 1 to 100 letters"),
        ({"name": ".hidden"}, "name: must be 1 to 100 letters"),
        ({"name": ""}, "name: must be 1 to 100 letters"),
        ({"name": "x" * 300}, "name: must be 1 to 100 letters"),
    ],
)
def test_a_refused_sweep_leaves_no_folder(workdir, kwargs, words):
    kwargs = {"space": ParameterSpace(grid={"x": [1, 2]}), **kwargs}
    before = {p for p in workdir.rglob("*")}
    if words is None:
        Sweep(kwargs.pop("space"), ["python", "job.py"], workdir=workdir, **kwargs)
        assert len(list((workdir / "sweeps").iterdir())) == 1
        return
    with pytest.raises(ConfigError if "division" not in words else ZeroDivisionError) as err:
        Sweep(kwargs.pop("space"), ["python", "job.py"], workdir=workdir, **kwargs)
    assert words in str(err.value)
    assert {p for p in workdir.rglob("*")} - before <= {workdir / "sweeps"}  # at most the (empty) parent
    assert not (workdir / "sweeps").exists() or not any((workdir / "sweeps").iterdir())


@pytest.mark.parametrize("what", ["complete", "complete(sources)", "retry_failed", "cancel", "cancel(task)"])
def test_a_change_refused_by_the_lock_writes_nothing(workdir, what):
    directory = workdir / "sweeps" / "held"
    (workdir / "controller.py").write_text(CONTROLLER)
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(directory)], cwd=workdir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"

        def idle() -> bool:
            with contextlib.closing(sqlite3.connect(directory / "ledger.sqlite")) as db:
                return db.execute("SELECT SUM(state='FAILED'), SUM(state='PENDING' AND retry_at IS NOT NULL) "
                                  "FROM tasks").fetchone() == (2, 2)

        until(idle, 60, "2 FAILED and 2 PENDING tasks waiting out their backoff")
        watcher = Sweep.attach(directory, resume=False)
        before = _ledger(directory)
        call = {
            "complete": watcher.complete,
            "complete(sources)": lambda: watcher.complete([LocalComputeSource("elsewhere")]),
            "retry_failed": watcher.retry_failed,
            "cancel": watcher.cancel,
            "cancel(task)": lambda: watcher.cancel(before[0][2][0]),
        }[what]
        with pytest.raises(SweepLockedError) as err:
            call()
        assert _ledger(directory) == before, f"{what} changed the ledger although it was refused"
        text = str(err.value)
        assert f"being driven by pid {proc.pid} on {socket.gethostname()}" in text
        assert "stop that controller" in text and "Sweep.attach(dir, resume=False)" in text
        assert not watcher.running and proc.poll() is None
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _ledger(directory) == before
    assert watcher.cancel() == 2  # the controller is gone: the same call now works
