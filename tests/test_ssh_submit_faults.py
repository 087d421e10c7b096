"""Exactly once when the connection drops while a batch of jobs is being started on an SSH host.

The start command is made slow by wrapping the real start script (a `sleep` before or after
its launches), so the drop lands inside it; the jobs count their own runs in a remote file.
"""

from __future__ import annotations

import pytest

from hsm_notebook import ParameterSpace, RetryPolicy, Sweep
from hsm_notebook.sources.ssh_jobs import RemoteJobManager
from tests.contract.conftest import ssh_source
from tests.helpers import until
from tests.test_ssh import _remote


@pytest.mark.parametrize("where", ["after the launches", "before the launches"])
def test_a_connection_dropped_during_a_batch_start_runs_each_task_once(workdir, ssh_server, ssh_host_fresh,
                                                                      monkeypatch, where):
    h = ssh_host_fresh
    real = RemoteJobManager.start_script
    calls = []

    def slow_start(self, jobs):
        script = real(self, jobs)
        calls.append(len(jobs))
        if len(calls) > 1:
            return script
        if where == "after the launches":  # the jobs start; the answer never comes back
            return script.replace("echo started; fi", "sleep 4; echo started; fi")
        return "sleep 4\n" + script  # nothing starts before the drop

    monkeypatch.setattr(RemoteJobManager, "start_script", slow_start)
    runs = f"/home/{h.user}/runs.txt"
    space = ParameterSpace(grid={"x": list(range(8))}, fixed={"sleep": 1, "append": runs})
    sweep = Sweep(space, ["python", "job.py"], [ssh_source(h, "flaky", 8, give_up_after=60)], workdir=workdir,
                  poll_interval=0.2, retry=RetryPolicy(max_attempts=3, backoff=0.2)).start()
    until(lambda: sweep.counts().get("SUBMITTING") == 8, 60, "8 submissions in flight")
    if where == "after the launches":
        until(lambda: len(_remote(h, f"cat {runs} 2>/dev/null").split()) == 8, 30, "8 jobs started")
    ssh_server.kill_connections(h)
    sweep.wait(timeout=120)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all(), status[["state", "attempt", "error"]]
    done = sorted(_remote(h, f"cat {runs}").split())
    assert done == sorted(status["task_id"]), f"{len(done)} runs for 8 tasks"
    if where == "after the launches":
        assert (status["attempt"] == 1).all()  # they had started: adopted, not started again
    else:  # nothing started: each first attempt is LOST in words (claimed on the host as never started,
        # or never sent once the connection was known to be down) and ran once on its retry
        assert (status["attempt"] == 2).all(), status[["attempt", "error"]]
        for tid in status["task_id"]:
            frame = sweep.history(tid)
            lost = frame[frame["state"].astype(str) == "LOST"]
            assert len(lost) == 1, frame
            said = "never started|could not be submitted to flaky: .*not connected"
            assert lost["detail"].str.contains(said).all(), lost["detail"].tolist()
