"""The promise under faults: every failure ends in words, never in a hang or a second run.

Sources here are written the way users write them for the reference HSM API (plain
strings, their own ``active_jobs`` bookkeeping, their own health words); the jobs they
run are real processes.  The ledger failure is a real full disk (a small tmpfs).
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from hsm_notebook import (
    HsmError,
    JobState,
    LocalComputeSource,
    ParameterSpace,
    RetryPolicy,
    StoreError,
    Sweep,
)
from hsm_notebook.core.model.errors import CommandTimeout
from tests.helpers import job_sweep, until
from tests.servers.sshd import small_tmpfs
from tests.sources import FailingSubmitSource, ReferenceStyleSource, SlowSubmitSource


@pytest.mark.parametrize("quirk", ["string_updates", "moves_jobs"])
def test_reference_bookkeeping_habits_finish_the_sweep(workdir, quirk, caplog):
    sweep = job_sweep(workdir, [ReferenceStyleSource(quirk=quirk)], range(4), poll_interval=0.05,
                      health_interval=0.2).start()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"COMPLETED": 4}
    assert sorted(sweep.results()["score"]) == [0.0, 2.0, 4.0, 6.0]  # outcomes found without active_jobs
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


@pytest.mark.parametrize("health", [{"status": "ok"}, {"status": "overloaded"}, "ok"])
def test_reference_health_words_keep_the_source_in_use(workdir, health):
    sweep = job_sweep(workdir, [ReferenceStyleSource(health=health)], range(6), poll_interval=0.05,
                      health_interval=0.2).start()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"COMPLETED": 6}
    row = sweep.sources_status().iloc[0]
    assert row["state"] == "closed" and row["reason"] == "the run ended"  # never disabled
    assert row["health"] in ("healthy", "degraded")
    if health == {"status": "overloaded"}:
        assert row["health"] == "degraded" and "overloaded" in sweep._manager.monitor.health["ref"].reason


def test_unknown_for_one_job_keeps_the_others_and_ends_lost_with_the_reason(workdir):
    source = ReferenceStyleSource(quirk="unknown")
    sweep = job_sweep(workdir, [source], range(4), unknown_timeout=0.5, retry=RetryPolicy(max_attempts=1),
                      poll_interval=0.05, health_interval=0.2).start()
    sweep.wait(timeout=60)
    status = sweep.status().set_index("x")
    assert list(status.loc[[1, 2, 3], "state"]) == ["COMPLETED"] * 3
    assert status.loc[0, "state"] == "LOST"
    assert "no usable state" in status.loc[0, "error"] and "UNKNOWN" in status.loc[0, "error"]


def test_an_undefined_state_word_is_named_in_the_error(workdir):
    sweep = job_sweep(workdir, [ReferenceStyleSource(quirk="odd_word")], range(4), unknown_timeout=0.5,
                      retry=RetryPolicy(max_attempts=1), poll_interval=0.05, health_interval=0.2).start()
    sweep.wait(timeout=60)
    status = sweep.status().set_index("x")
    assert status.loc[0, "state"] == "LOST" and "HALF_DONE" in status.loc[0, "error"]
    assert (status.loc[[1, 2, 3], "state"] == "COMPLETED").all()


def test_an_outcome_that_raises_ends_each_task_with_the_reason(workdir):
    sweep = job_sweep(workdir, [ReferenceStyleSource(quirk="outcome_raises")], range(4), poll_interval=0.05,
                      health_interval=0.2).start()
    sweep.wait(timeout=60)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all()
    assert status["error"].str.contains("outcome could not be read: RuntimeError: the results folder").all()
    assert "outcome" in sweep.sources_status().iloc[0]["problems"]


def test_cancel_during_an_in_flight_submission_cancels_it(workdir):
    ran = workdir / "ran.txt"
    space = ParameterSpace(grid={"x": list(range(4))}, fixed={"sleep": 5, "append": str(ran)})
    sweep = Sweep(space, ["python", "job.py"], [SlowSubmitSource("slow", 4)], workdir=workdir, poll_interval=0.05)
    sweep.start()
    until(lambda: sweep.counts().get("SUBMITTING") == 4, 30, "4 submissions in flight")
    assert sweep.cancel() == 4
    sweep.wait(timeout=60)
    status = sweep.status()
    assert (status["state"] == "CANCELLED").all(), status[["state", "error"]]
    assert (status["attempt"] == 1).all()  # never retried
    assert not list((sweep.directory / "tasks").glob("*/metrics.json"))  # stopped, not run to the end


# a ConnectError (the host could not be contacted) spends no attempt since issue 19 item 11:
# tests/test_ssh_edges_unit.py and tests/test_ssh_edges.py
@pytest.mark.parametrize("exc", [CommandTimeout(["start\n" + "job\n" * 5000], 60, "gpu1", "ref")],
                         ids=["timeout"])
def test_infrastructure_submission_failures_go_through_the_retry_budget(workdir, exc):
    source = FailingSubmitSource(exc)
    sweep = job_sweep(workdir, [source], range(2), retry=RetryPolicy(max_attempts=3, backoff=0.01),
                      poll_interval=0.05, health_interval=0.2).start()
    sweep.wait(timeout=60)
    status = sweep.status()
    assert (status["state"] == "LOST").all() and (status["attempt"] == 3).all()
    assert source.calls == 6  # 2 tasks x 3 attempts, then it stops
    assert status["error"].str.len().max() < 400  # never the whole script
    assert status["error"].str.contains("could not be submitted to ref").all()


def test_other_submission_failures_fail_the_task_in_short_words(workdir):
    source = FailingSubmitSource(ValueError("bad value " + "x" * 5000))
    sweep = job_sweep(workdir, [source], range(2), poll_interval=0.05, health_interval=0.2).start()
    sweep.wait(timeout=60)
    status = sweep.status()
    assert (status["state"] == "FAILED").all() and (status["attempt"] == 1).all()
    assert status["error"].str.startswith("submission to ref failed: ValueError: bad value").all()
    assert status["error"].str.len().max() < 400


def test_wait_from_an_event_callback_raises_instead_of_deadlocking(workdir, caplog):
    sweep = job_sweep(workdir, [LocalComputeSource(max_parallel_jobs=2)], range(2), poll_interval=0.05,
                      health_interval=0.2)
    raised: list[BaseException] = []

    def callback(event):
        if event is not None and event.state == JobState.COMPLETED and not raised:
            try:
                sweep.wait()
            except HsmError as exc:
                raised.append(exc)
            for call in (sweep.complete, sweep.retry_failed, sweep.cancel):
                try:
                    call()
                except HsmError as exc:
                    raised.append(exc)

    sweep.on_event(callback)
    sweep.start().wait(timeout=60)
    assert sweep.counts() == {"COMPLETED": 2}
    assert len(raised) == 4 and all("loop thread" in str(e) for e in raised)


def test_events_are_published_after_commit_and_without_the_write_lock(workdir):
    sweep = job_sweep(workdir, [LocalComputeSource(max_parallel_jobs=2)], range(3), poll_interval=0.05,
                      health_interval=0.2)
    seen: list[tuple[str, str, str]] = []
    problems: list[str] = []

    def callback(event):
        if event is None:
            return
        with contextlib.closing(sqlite3.connect(sweep.directory / "ledger.sqlite", timeout=0)) as conn:
            (state,) = conn.execute("SELECT state FROM events WHERE seq=(SELECT MAX(seq) FROM events "
                                    "WHERE task_id=?)", (event.task_id,)).fetchone()
            seen.append((event.task_id, event.state.value, state))
            try:  # a listener's own write must not wait for the manager's transaction
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                problems.append(str(exc))

    sweep.on_event(callback)
    sweep.start().wait(timeout=60)
    assert seen and not problems
    # every event a listener saw was already committed when it saw it
    committed = {(tid, st) for tid, st, _ in seen}
    with contextlib.closing(sqlite3.connect(sweep.directory / "ledger.sqlite")) as conn:
        rows = set(conn.execute("SELECT task_id, state FROM events").fetchall())
    assert committed <= rows


FILLER = """
import os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:])
with open(args["ran"], "a") as f:
    f.write(args["x"] + "\\n")
if args["x"] == "0" and not os.path.exists(args["ran"] + ".filled"):  # task 0 fills the disk, once
    try:
        with open(os.path.join(os.environ["HSM_TASK_DIR"], "ballast"), "wb") as f:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
    except OSError:
        pass
    open(args["ran"] + ".filled", "w").close()  # outside the full disk: the ballast is closed now
time.sleep(float(args.get("sleep", 1)))
"""


@pytest.fixture()
def full_disk_project(tmp_path):
    """A project whose sweeps live on a 3 MB tmpfs that task x=0 fills."""
    (tmp_path / "filler.py").write_text(FILLER)
    with small_tmpfs(tmp_path / "small", size="3m") as small:
        yield tmp_path, small


def test_a_full_disk_under_the_ledger_stops_the_sweep_in_words(full_disk_project):
    project, small = full_disk_project
    ran = project / "ran.txt"
    space = ParameterSpace(grid={"x": list(range(6))}, fixed={"ran": str(ran), "sleep": 1})
    sweep = Sweep(space, ["python", "filler.py"], [LocalComputeSource(max_parallel_jobs=2)], workdir=project,
                  directory=small / "sweep", poll_interval=0.05)
    sweep.start()
    with pytest.raises(StoreError, match=r"cannot be used \(database or disk is full\); free space"):
        sweep.wait(timeout=60)
    assert not sweep.running
    until(lambda: Path(str(ran) + ".filled").exists(), 30, "the filler closed its ballast")
    # free space and carry on: nothing that started runs again
    for ballast in (small / "sweep" / "tasks").glob("*/ballast"):
        ballast.unlink()
    again = Sweep.attach(small / "sweep")
    again.wait(timeout=60)
    assert again.counts() == {"COMPLETED": 6}
    # each attempt that started ran exactly once; a task runs again only after an attempt whose end
    # could not be known (LOST, in words: its exit code could not be written on the full disk)
    runs = collections.Counter(int(x) for x in ran.read_text().split())
    x_of = dict(zip(again.status()["task_id"], again.status()["x"], strict=True))
    with contextlib.closing(sqlite3.connect(small / "sweep" / "ledger.sqlite")) as conn:
        attempts = conn.execute("SELECT task_id, state, error FROM attempts ORDER BY attempt").fetchall()
    started = collections.Counter(x_of[tid] for tid, state, error in attempts
                                  if not (state == "LOST" and "never started" in (error or "")
                                          or state == "LOST" and "before the job started" in (error or "")))
    assert runs == started and set(runs) == set(range(6)), (runs, attempts)
    assert all(error for _, state, error in attempts if state != "COMPLETED")


def _fill(path: Path) -> Path:
    ballast = path / "ballast"
    with contextlib.suppress(OSError), open(ballast, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return ballast


def test_a_cancel_on_a_full_disk_says_so_and_changes_nothing(full_disk_project):
    project, small = full_disk_project
    sweep = Sweep(ParameterSpace(grid={"x": list(range(50))}), ["python", "filler.py"], workdir=project,
                  directory=small / "sweep")
    ballast = _fill(small)
    with pytest.raises(StoreError, match=r"\(disk I/O error|database or disk is full\); free space on that disk"):
        sweep.cancel()
    ballast.unlink()
    assert sweep.counts() == {"PENDING": 50}


def test_the_cli_exits_non_zero_with_the_reason_when_the_ledger_fails(full_disk_project):
    project, small = full_disk_project
    spec = project / "sweep.yaml"
    spec.write_text(f"command: [python, filler.py]\nsweep:\n  grid:\n    x: [0, 1]\n    ran: [{project / 'ran.txt'}]\n")
    proc = subprocess.run([sys.executable, "-m", "hsm_notebook", "run", str(spec), "--dir", str(small / "s")],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "disk is full" in proc.stderr and "free space" in proc.stderr, proc.stderr


def test_a_source_that_keeps_raising_is_disabled_and_the_sweep_says_why(workdir):
    class BrokenPolls(ReferenceStyleSource):
        async def poll(self, job_ids):
            raise KeyError("job_info")

    sweep = job_sweep(workdir, [BrokenPolls()], range(2), max_failures=3, poll_interval=0.05,
                      health_interval=0.2).start()
    with pytest.raises(HsmError, match=r"no source can take the remaining tasks: 2 task\(s\) wait "
                                       r".*polling failed 3 times in a row"):
        sweep.wait(timeout=60)
    row = sweep.sources_status().iloc[0]
    assert row["state"] == "disabled" and "KeyError" in row["reason"]


def test_tasks_only_a_broken_source_could_run_stop_the_sweep_after_the_stall_timeout(workdir):
    class BrokenPolls(ReferenceStyleSource):
        async def poll(self, job_ids):
            raise KeyError("job_info")

    sources = [BrokenPolls("gpu", 1), LocalComputeSource("cpu", 2)]
    sweep = job_sweep(workdir, sources, range(4), max_failures=2, stall_timeout=1,
                      requires=lambda p: {"sources": ["gpu"]} if p["x"] < 2 else None, poll_interval=0.05,
                      health_interval=0.2).start()
    with pytest.raises(HsmError, match=r"no source has taken the remaining tasks for 1 s: .*gpu: disabled"):
        sweep.wait(timeout=60)
    status = sweep.status().set_index("x")
    assert list(status.loc[[2, 3], "state"]) == ["COMPLETED", "COMPLETED"]  # the cpu source did its share
    assert set(status.loc[[0, 1], "state"]) == {"PENDING"}
