"""Exactly once across a crash: SIGKILL the controller mid-sweep, attach from a new process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from hsm_notebook import Sweep, SweepLockedError

CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
    workdir, shared, directory = sys.argv[1:4]
    space = ParameterSpace(grid={"x": list(range(40))}, fixed={"append": shared, "sleep": 0.3})
    sweep = Sweep(space, ["python", "job.py"], [LocalComputeSource(max_parallel_jobs=4)],
                  workdir=workdir, directory=directory, poll_interval=0.2)
    print("started", flush=True)
    sweep.run()
    print("finished", flush=True)
    """
)

ATTACH = textwrap.dedent(
    """
    import sys
    from hsm_notebook import Sweep
    sweep = Sweep.attach(sys.argv[1])
    sweep.wait(timeout=240)
    print(sorted(sweep.counts().items()))
    """
)


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("kill_after", [0, 9, 27])
def test_sigkill_then_attach_runs_every_task_exactly_once(workdir, kill_after):
    shared = workdir / "appended.txt"
    directory = workdir / "sweeps" / f"crash-{kill_after}"
    (workdir / "controller.py").write_text(CONTROLLER)
    (workdir / "attach.py").write_text(ATTACH)
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(shared), str(directory)],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(_lines(shared)) < kill_after or not (directory / "tasks").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "controller ended before the kill point"
            time.sleep(0.02)
        with pytest.raises(SweepLockedError, match="being driven by pid"):
            Sweep.attach(directory)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    before = len(_lines(shared))
    assert before < 40, "the sweep finished before the kill: nothing was tested"
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    out = subprocess.run([sys.executable, "attach.py", str(directory)], cwd=workdir,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('COMPLETED', 40)]"
    ids = _lines(shared)
    assert len(ids) == 40 and len(set(ids)) == 40, f"{len(ids)} runs for {len(set(ids))} tasks"
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        earlier = db.execute("SELECT a.job_name, a.state, a.error FROM attempts a JOIN tasks t USING (task_id) "
                             "WHERE a.attempt < t.attempt").fetchall()
    for job_name, state, error in earlier:  # only attempts that never started may be followed by another
        assert (state, error) == ("LOST", "controller stopped before the job started")
        pid = directory / "tasks" / job_name / "pid"  # absent, or claimed by the controller: never ran
        assert not pid.exists() or pid.read_text().strip() == "never"
        assert not (directory / "tasks" / job_name / "stdout.log").exists()
    assert len(Sweep.attach(directory, resume=False).results()) == 40


STEPPING = textwrap.dedent(
    """
    import sys, time
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
    workdir, directory = sys.argv[1:3]
    sweep = Sweep(ParameterSpace(grid={"x": list(range(4))}), ["python", "steps.py"],
                  [LocalComputeSource(max_parallel_jobs=4)], workdir=workdir, directory=directory, poll_interval=0.1)
    print("started", flush=True)
    sweep.run()
    """
)


def test_intermediate_metrics_are_neither_lost_nor_doubled_across_a_controller_crash(workdir):
    """Steps read before a SIGKILL of the controller are read again, once, by the new one."""
    (workdir / "steps.py").write_text(
        "import time\nfrom hsm_notebook.metrics import log_metrics\n"
        "for i in range(20):\n    log_metrics(step=i, loss=1 / (i + 1))\n    time.sleep(0.3)\n")
    (workdir / "controller.py").write_text(STEPPING)
    directory = workdir / "sweeps" / "stepping"
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(directory)], cwd=workdir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while True:  # some steps are in the ledger, the jobs still run
            assert time.monotonic() < deadline and proc.poll() is None
            if (directory / "ledger.sqlite").exists():
                with sqlite3.connect(directory / "ledger.sqlite") as db:
                    has_table = db.execute("SELECT name FROM sqlite_master WHERE name='steps'").fetchone()
                    if has_table and db.execute("SELECT COUNT(*) FROM steps").fetchone()[0] >= 8:
                        break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    sweep = Sweep.attach(directory)
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 4}
    per_task = sweep.metrics(metric="loss").groupby("task_id")["step"].apply(list)
    assert len(per_task) == 4 and all(steps == [float(i) for i in range(20)] for steps in per_task), per_task
