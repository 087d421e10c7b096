"""Cancels on a real single-node Slurm (issue 19, items 14 and 15): ``sweep.cancel(task)`` is
recorded when it returns and ``complete()`` right after reruns it; a user's own ``scancel`` of a
running task and of a pending array task ends CANCELLED with the note that says so."""

from __future__ import annotations

import pytest

from hsm_notebook import SlurmComputeSource, Sweep
from tests.helpers import job_sweep, until

pytestmark = pytest.mark.slurm

NOTE = "cancelled outside hsm_notebook (scancel)"


def _slurm(cluster, slots: int) -> SlurmComputeSource:
    return SlurmComputeSource("slurm", slots, partition=cluster.partition, slurm_env=dict(cluster.env),
                              poll_interval=0.3)


def _rows(sweep: Sweep):
    return sweep.status().set_index("task_id")


def test_a_cancel_is_recorded_when_it_returns_and_complete_right_after_reruns_it(workdir, slurm_cluster):
    sweep = job_sweep(workdir, [_slurm(slurm_cluster, 2)], {"x": [1, 2], "sleep": [60]}, poll_interval=0.3).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 2, timeout=60, what="2 running")
        tid = sweep.status().query("state == 'RUNNING'")["task_id"].iloc[0]
        assert sweep.cancel(tid) == 1
        assert _rows(sweep).loc[tid, "state"] == "CANCELLED"  # status() agrees as soon as cancel() returns
        sweep.complete()  # right after: the cancelled task runs again
        until(lambda: _rows(sweep).loc[tid, "attempt"] == 2, timeout=60, what="the cancelled task's second attempt")
    finally:
        sweep.cancel()
        sweep.wait(timeout=60)
    assert sweep.counts() == {"CANCELLED": 2}


def test_a_users_own_scancel_of_a_running_and_a_pending_task_is_noted(workdir, slurm_cluster):
    sweep = job_sweep(workdir, [_slurm(slurm_cluster, 1)], {"x": [0, 1, 2], "sleep": [60]}, poll_interval=0.3,
                      retry={"max_attempts": 3, "retry_failed": True}).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 1 and sweep.counts().get("QUEUED", 0) == 2,
              timeout=60, what="1 running, 2 pending in the array")
        status = sweep.status()
        running = status.query("state == 'RUNNING'").iloc[0]
        pending = status.query("state == 'QUEUED'").iloc[0]
        for row in (running, pending):
            assert slurm_cluster.run("scancel", row["job_id"]).returncode == 0
        ids = [running["task_id"], pending["task_id"]]
        try:
            until(lambda: (_rows(sweep).loc[ids, "state"] == "CANCELLED").all(), timeout=60, what="both cancelled")
        except AssertionError:
            raise AssertionError(f"{_rows(sweep).loc[ids, ['state', 'job_id', 'detail', 'error']]}\n"
                                 f"{slurm_cluster.run('squeue', '-h', '-r', '-t', 'all').stdout}") from None
        final = _rows(sweep)
        for row in (running, pending):
            error = str(final.loc[row["task_id"], "error"])
            assert NOTE in error and "not retried" in error, (row["state"], error)
            assert final.loc[row["task_id"], "attempt"] == 1
    finally:
        sweep.cancel()
        sweep.wait(timeout=60)
