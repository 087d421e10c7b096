"""DistributedJobManager: several sources, failover, retries, constraints, control, events."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, ParameterSpace, RetryPolicy, Sweep
from hsm_notebook.core._loop import run_sync
from tests.contract.conftest import ssh_source
from tests.helpers import until as _until
from tests.test_ssh import _remote


def _attempts(sweep):
    with sqlite3.connect(sweep.directory / "ledger.sqlite") as db:
        return db.execute("SELECT task_id, attempt, source, state, error FROM attempts "
                          "ORDER BY task_id, attempt").fetchall()


def test_sixty_tasks_on_this_machine_and_two_ssh_hosts_complete_exactly_once(workdir, ssh_host, ssh_host2):
    local_file = workdir / "local-runs.txt"
    remote_file = lambda h: f"/home/{h.user}/runs-{workdir.name}.txt"  # noqa: E731
    sources = [LocalComputeSource(max_parallel_jobs=2, env={"RUNS_FILE": str(local_file)}),
               ssh_source(ssh_host, "a", 3, env={"RUNS_FILE": remote_file(ssh_host)}),
               ssh_source(ssh_host2, "b", 3, env={"RUNS_FILE": remote_file(ssh_host2)})]
    # each source appends to a file of its own: the job gets the path through its environment
    space = ParameterSpace(grid={"x": list(range(60))}, fixed={"sleep": 0.1})
    (workdir / "job.py").write_text((workdir / "job.py").read_text().replace(
        'if "append" in args:', 'args.setdefault("append", os.environ["RUNS_FILE"])\nif "append" in args:'))
    sweep = Sweep(space, ["python", "job.py"], sources, workdir=workdir, poll_interval=0.2).run()
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all() and len(sweep.results()) == 60
    assert set(status["source"]) == {"local", "a", "b"}
    runs = local_file.read_text().split() + _remote(ssh_host, f"cat {remote_file(ssh_host)}").split() \
        + _remote(ssh_host2, f"cat {remote_file(ssh_host2)}").split()
    assert sorted(runs) == sorted(status["task_id"]), "some task ran twice or not at all"
    stats = sweep.sources_status().set_index("source")
    assert stats["completed"].sum() == 60 and (stats["completed"] > 0).all()


def test_a_dead_host_and_a_hung_host_fail_over_to_the_others(workdir, ssh_server):
    dead, hung = ssh_server.start("127.0.0.8"), ssh_server.start("127.0.0.9")
    try:
        sources = [LocalComputeSource(max_parallel_jobs=2),
                   ssh_source(dead, "dead", 3, give_up_after=300), ssh_source(hung, "hung", 3, give_up_after=300)]
        space = ParameterSpace(grid={"x": list(range(40))}, fixed={"sleep": 0.6})
        sweep = Sweep(space, ["python", "job.py"], sources, workdir=workdir, poll_interval=0.2,
                      health_interval=1.0, max_failures=2)
        sweep.start()
        _until(lambda: {"dead", "hung"} <= set(sweep.status().query("state == 'RUNNING'")["source"]),
               what="jobs running on both hosts")
        ssh_server.stop_listener(dead)
        ssh_server.kill_connections(dead)
        ssh_server.hang(hung)
        sweep.wait(timeout=180)
        status = sweep.status()
        assert (status["state"] == "COMPLETED").all(), status[["source", "state", "error"]]
        results = sweep.results()
        assert len(results) == 40 and results["task_id"].is_unique
        moved = [a for a in _attempts(sweep) if a[2] in ("dead", "hung") and a[3] == "LOST"]
        assert moved, "no attempt was failed over"
        for task_id, _attempt, _source, _state, error in moved:
            assert "disabled" in error
            final = status.set_index("task_id").loc[task_id]
            assert final["state"] == "COMPLETED"
        health = sweep.sources_status().set_index("source")
        assert health.loc["dead", "state"] == "disabled" and health.loc["hung", "state"] == "disabled"
    finally:
        ssh_server.resume(hung)
        for h in (dead, hung):
            ssh_server.kill_user_processes(h)
            ssh_server.stop(h)


def test_lost_jobs_are_retried_and_failed_ones_only_when_asked(workdir):
    flag = workdir / "fail-once"
    flag.write_text("")
    (workdir / "job.py").write_text((workdir / "job.py").read_text().replace(
        "    code = 4", "    code = 4\n    os.unlink(args['fail_flag'])"))
    retrying = Sweep(ParameterSpace(grid={"x": [1]}, fixed={"fail_flag": str(flag)}), ["python", "job.py"],
                     workdir=workdir, poll_interval=0.1, retry=RetryPolicy(retry_failed=True, backoff=0.2)).run()
    assert retrying.counts() == {"COMPLETED": 1} and retrying.status()["attempt"].iloc[0] == 2
    history = retrying.history(retrying.status()["task_id"].iloc[0])
    seen = [s for s in history["state"].astype(str) if s != "RUNNING"]  # RUNNING is seen or not, by timing
    assert seen == ["SUBMITTING", "QUEUED", "FAILED", "PENDING", "SUBMITTING", "QUEUED", "COMPLETED"]
    assert list(history["attempt"].dropna().astype(int).unique()) == [1, 2]
    flag.write_text("")
    plain = Sweep(ParameterSpace(grid={"x": [2]}, fixed={"fail_flag": str(flag)}), ["python", "job.py"],
                  workdir=workdir, poll_interval=0.1).run()
    assert plain.counts() == {"FAILED": 1} and plain.status()["attempt"].iloc[0] == 1
    # a job whose wrapper is killed is LOST: an infrastructure failure, retried by default
    lost = Sweep(ParameterSpace(grid={"x": [3]}, fixed={"sleep": 30}), ["python", "job.py"], workdir=workdir,
                 poll_interval=0.1, retry={"backoff": 0.1}).start()
    _until(lambda: lost.counts().get("RUNNING") == 1, what="running")
    job = lost.status()["job_name"].iloc[0]
    os.killpg(int((lost.directory / "tasks" / job / "pid").read_text()), signal.SIGKILL)
    _until(lambda: lost.status()["attempt"].iloc[0] == 2 and lost.counts().get("RUNNING") == 1, what="retry")
    lost.cancel()
    lost.wait(timeout=30)
    assert [a[3] for a in _attempts(lost)] == ["LOST", "CANCELLED"]


def test_requirements_place_tasks_and_unrunnable_ones_fail_clearly(workdir):
    cpu, gpu = LocalComputeSource("cpu", 2), LocalComputeSource("gpu", 2, gpus=[0, 1], gpus_per_job=1)
    space = ParameterSpace(grid={"x": list(range(8)), "big": [True, False]})
    sweep = Sweep(space, ["python", "job.py"], [cpu, gpu], workdir=workdir, poll_interval=0.1,
                  requires=lambda p: {"gpus": 1} if p["big"] else None).run()
    status = sweep.status()
    assert set(status[status["big"]]["source"]) == {"gpu"}
    assert (status["state"] == "COMPLETED").all()
    odd = Sweep(ParameterSpace(grid={"x": [1, 2]}), ["python", "job.py"], [cpu], workdir=workdir, poll_interval=0.1,
                requires=lambda p: {"tags": ["a100"]} if p["x"] == 2 else None).run()
    row = odd.status().set_index("x").loc[2]
    assert row["state"] == "FAILED" and "no source can run it" in row["error"] and "a100" in row["error"]
    assert odd.status().set_index("x").loc[1, "state"] == "COMPLETED"


def test_add_drain_disable_and_cancel_by_source_while_running(workdir):
    first = LocalComputeSource("first", 2)
    sweep = Sweep(ParameterSpace(grid={"x": list(range(16))}, fixed={"sleep": 0.4}), ["python", "job.py"], [first],
                  workdir=workdir, poll_interval=0.1).start()
    _until(lambda: sweep.counts().get("RUNNING", 0) == 2, what="2 running")
    sweep.add_source(LocalComputeSource("second", 2))
    sweep.drain("first")
    with pytest.raises(ConfigError, match="no source named 'nope'"):
        sweep.drain("nope")
    _until(lambda: sweep.counts().get("COMPLETED", 0) >= 8, what="8 done")
    assert sweep.sources_status().set_index("source").loc["first", "state"] == "draining"
    sweep.enable("first")
    sweep.disable("second")  # its running tasks go back to the queue and run on "first"
    sweep.wait(timeout=120)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all()
    late = status[status["attempt"] > 1]
    assert (late["source"] == "first").all()
    # cancel by source
    again = Sweep(ParameterSpace(grid={"x": list(range(4))}, fixed={"sleep": 30}), ["python", "job.py"],
                  [LocalComputeSource("p", 2), LocalComputeSource("q", 2)], workdir=workdir, poll_interval=0.1).start()
    _until(lambda: again.counts().get("RUNNING", 0) == 4, what="4 running")
    assert again.cancel(source="q") == 2
    _until(lambda: again.counts().get("CANCELLED", 0) == 2, what="2 cancelled")
    assert set(again.status().query("state == 'CANCELLED'")["source"]) == {"q"}
    again.cancel()
    again.wait(timeout=60)


def test_events_stream_every_transition(workdir):
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}, paired=[{"exit": [0, 3]}]), ["python", "job.py"],
                  workdir=workdir, poll_interval=0.1)
    seen_by_callback = []
    sweep.on_event(seen_by_callback.append)

    async def consume():
        events = []
        sweep.start()
        async for event in sweep.events():
            events.append(event)
        return events

    events = run_sync(consume())
    per_task = {}
    for e in events:
        per_task.setdefault(e.task_id, []).append(e.state.value)
    assert sorted(v[-1] for v in per_task.values()) == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"]
    assert all(v[0] == "SUBMITTING" for v in per_task.values())
    assert [e for e in seen_by_callback if e is not None] == events and seen_by_callback[-1] is None
