"""The ledger: every transition recorded, the status frame's shape and dtypes."""

from __future__ import annotations

import sqlite3

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep


def test_every_transition_is_in_the_event_log(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}, paired=[{"exit": [0, 5]}]), ["python", "job.py"],
                  [LocalComputeSource(max_parallel_jobs=1)], workdir=workdir, poll_interval=0.1).run()
    with sqlite3.connect(sweep.directory / "ledger.sqlite") as db:
        events = db.execute("SELECT task_id, state FROM events ORDER BY seq").fetchall()
        per_task = {}
        for tid, state in events:
            per_task.setdefault(tid, []).append(state)
        finals = dict(db.execute("SELECT task_id, state FROM tasks"))
    for tid, states in per_task.items():
        assert states[:2] == ["SUBMITTING", "QUEUED"] and states[-1] == finals[tid]
        assert states[-1] in ("COMPLETED", "FAILED")


def test_status_frame_columns_and_dtypes(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2], "name": ["a b"]}), ["python", "job.py"], workdir=workdir)
    before = sweep.status()
    assert list(before.columns) == ["task_id", "job_name", "source", "state", "job_id", "x", "name", "attempt",
                                    "submit_time", "start_time", "end_time", "duration", "exit_code", "error", "detail"]
    assert set(before["state"]) == {"PENDING"} and str(before["state"].dtype) == "category"
    sweep.run()
    after = sweep.status()
    assert str(after["submit_time"].dtype).startswith("datetime64") and str(after["exit_code"].dtype) == "Int64"
    assert (after["start_time"] <= after["end_time"]).all()
    assert "2 COMPLETED" in repr(sweep)
    assert (after["job_id"] == after["job_name"]).all()  # this machine names its jobs by their folders
