"""Reading a sweep on a full disk (issue 19, item 16): ``Sweep.attach(dir, resume=False)`` and
every read (status, results, metrics, one task) work, because readers open the ledger read-only
and never need to write (not even SQLite's shared index).  The full disk is a real one: a small
tmpfs mounted for the test, filled to the last byte, and unmounted afterwards."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm_notebook import ParameterSpace, Sweep

STEPS = ("from hsm_notebook.metrics import log_metrics\n"
         "for i in range(3):\n    log_metrics(step=i, loss=1 / (i + 1))\n"
         "log_metrics(loss=0.25)\n")


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of our own (this test needs the right to mount: it runs as root here)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path) -> None:
    """Write until the disk says it is full (ENOSPC), then check no byte is left."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with pytest.raises(OSError), open(disk / "filler", "ab") as f:
        f.write(b"\0" * 4096)
        f.flush()
    assert os.statvfs(disk).f_bavail == 0


def test_a_sweep_reads_on_a_full_disk(small_disk: Path, workdir: Path) -> None:
    (workdir / "steps.py").write_text(STEPS)
    directory = small_disk / "sweep"
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "steps.py"], workdir=workdir, poll_interval=0.1,
                  arg_style="none", directory=directory).run()
    tids = list(sweep.status()["task_id"])
    sweep.store.close()  # the controller is done: its connection goes (SQLite removes -wal and -shm)
    _fill(small_disk)

    reader = Sweep.attach(directory, resume=False)
    status = reader.status()
    assert list(status["state"]) == ["COMPLETED", "COMPLETED"]
    assert sorted(reader.results()["loss"]) == [0.25, 0.25]
    assert list(reader.metrics(tids[0], "loss")["step"]) == [0.0, 1.0, 2.0]
    assert reader.task(tids[1])["state"] == "COMPLETED"
    assert reader.counts() == {"COMPLETED": 2}
