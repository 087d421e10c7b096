"""Grid Engine as real clusters use it, against the real single-node Grid Engine the tests start:
a user's own qdel, a rerun (qmod -rj), a task killed at its h_rt, a task held in error state, and a
controller that dies between qsub and its record (each task still runs exactly once)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from hsm_notebook import ParameterSpace, ResourceSpec, SGEComputeSource, Sweep
from tests.helpers import job_sweep, until

NOTE = "cancelled outside hsm_notebook (qdel)"


def _source(cluster, name="sge", slots=4, **kwargs) -> SGEComputeSource:
    return SGEComputeSource(name, slots, queue=cluster.queue, sge_env=cluster.sge_env, poll_interval=0.3, **kwargs)


def _rows(sweep: Sweep):
    return sweep.status().set_index("task_id")


def test_a_users_own_qdel_of_a_running_and_a_pending_task_is_noted_and_never_retried(workdir, sge):
    """qdel of a running task leaves no exit code and no qstat record: its qacct record (failed 100)
    says it was deleted.  qdel of a pending task leaves nothing at all: the controller claims it."""
    sweep = job_sweep(workdir, [_source(sge, slots=1)], {"x": [0, 1, 2], "sleep": [60]}, poll_interval=0.3,
                      retry={"max_attempts": 3, "retry_failed": True}).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 1 and sweep.counts().get("QUEUED", 0) == 2,
              timeout=60, what="1 running, 2 pending in the array")
        status = sweep.status()
        running, pending = status.query("state == 'RUNNING'").iloc[0], status.query("state == 'QUEUED'").iloc[0]
        for row in (running, pending):
            assert sge.run("qdel", row["job_id"]).returncode == 0  # the id status() shows: ARRAY.TASK
        ids = [running["task_id"], pending["task_id"]]
        until(lambda: (_rows(sweep).loc[ids, "state"] == "CANCELLED").all(), timeout=60, what="both cancelled")
        final = _rows(sweep)
        assert "while it ran" in final.loc[running["task_id"], "error"]
        assert "failed 100 : assumedly after job" in final.loc[running["task_id"], "error"]  # qacct's words
        for row in (running, pending):
            error = str(final.loc[row["task_id"], "error"])
            assert NOTE in error and "not retried" in error, error
            assert final.loc[row["task_id"], "attempt"] == 1
    finally:
        sweep.cancel()
        sweep.wait(timeout=60)


RERUN_JOB = textwrap.dedent('''
    import os, sys, time
    from hsm_notebook.metrics import log_metrics
    with open(os.environ["RUNS_LOG"], "a") as f:
        f.write(os.environ["HSM_TASK_ID"] + "\\n")
    open(os.path.join(os.environ["HSM_TASK_DIR"], "started"), "w").close()
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.1)
    log_metrics(done=1)
''')


def test_a_task_grid_engine_reruns_runs_again_and_keeps_its_first_run(workdir, sge):
    """``qmod -rj`` (what Grid Engine does to a rerunnable job whose node is lost) kills the run and
    queues it again: the task runs a second time (its first run's logs kept in run1/), ends once, and
    the outcome says it was requeued."""
    (workdir / "rerun.py").write_text(RERUN_JOB)
    runs, release = workdir / "runs.log", workdir / "release"
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "rerun.py"], [_source(sge)], workdir=workdir,
                  poll_interval=0.3, env={"RUNS_LOG": str(runs), "RELEASE": str(release)}).start()
    try:
        folder = lambda: sweep.directory / "tasks" / (sweep.status().iloc[0]["job_name"] or "unsubmitted")  # noqa: E731
        until(lambda: (folder() / "started").exists(), timeout=60, what="the first run")
        (folder() / "started").unlink()
        job_id = sweep.status().iloc[0]["job_id"]
        rerun = sge.run("qmod", "-rj", job_id)
        assert "rescheduling" in rerun.stdout, rerun.stdout + rerun.stderr  # qmod exits 0 even when it refuses
        until(lambda: "requeued by SGE" in str(sweep.status().iloc[0]["detail"]), timeout=60,
              what="the requeue seen")
        until(lambda: (folder() / "started").exists(), timeout=90, what="the second run")
        release.write_text("")
        sweep.wait(timeout=60)
    finally:
        if sweep.running:
            sweep.cancel()
    row = sweep.status().iloc[0]
    assert row["state"] == "COMPLETED" and row["attempt"] == 1, row.to_dict()
    assert "requeued by SGE 1 time" in row["error"]
    assert (folder() / "run1" / "stdout.log").exists()
    assert len(runs.read_text().split()) == 2  # the killed run and the one that finished, nothing more


def test_a_time_limit_kill_and_a_task_held_in_error_fail_in_words(workdir, sge):
    """h_rt kills without a trace in the task folder: qacct's failed 37 says why.  A task Grid Engine
    cannot start (its output file cannot be opened) waits in state Eqw forever: it is failed with
    Grid Engine's reason and removed."""
    timed = _source(sge, "timed", resources=ResourceSpec(walltime="0:2"))  # 2 s, as Slurm reads M:S
    held = _source(sge, "held", resources=ResourceSpec(extra={"o": "/nonexistent_hsm_dir/out", "j": "y"}))
    one = job_sweep(workdir, [timed], {"x": [1], "sleep": [120]}, poll_interval=0.3).start()
    two = job_sweep(workdir, [held], [1], poll_interval=0.3).start()
    one.wait(timeout=120)
    two.wait(timeout=60)
    row = one.status().iloc[0]
    assert row["state"] == "FAILED" and "killed at its h_rt/h_cpu/h_vmem limit" in row["error"], row.to_dict()
    assert "failed 37" in row["error"]
    row = two.status().iloc[0]
    assert row["state"] == "FAILED" and "error state" in row["error"], row.to_dict()
    assert "nonexistent_hsm_dir" in row["error"] and "Eqw" in row["error"]
    until(lambda: not sge.active_jobs(), 30, "the held task removed from Grid Engine")


QSUB_THEN_CRASH = """
import os, sys, time
from hsm_notebook import ParameterSpace, SGEComputeSource, Sweep
from hsm_notebook.sources import sge
workdir, directory, queue, ran = sys.argv[1:5]
real = sge.SGEComputeSource._submit_array

async def qsub_then_crash(self, jobs):
    ids = await real(self, jobs)
    deadline = time.monotonic() + 60  # until an array task has started (throttled: the others still wait)
    while not (os.path.exists(ran) and open(ran).read().split()):
        if time.monotonic() > deadline:
            sys.exit("no array task started within 60 s: the crash point cannot be reached")
        time.sleep(0.05)
    os._exit(9)          # the controller dies before it records any job id

sge.SGEComputeSource._submit_array = qsub_then_crash
space = ParameterSpace(grid={"x": list(range(8))}, fixed={"sleep": 2, "append": ran})
source = SGEComputeSource("sge", 8, queue=queue, poll_interval=0.3, array_throttle=2)
Sweep(space, ["python", "job.py"], [source], workdir=workdir, directory=directory, poll_interval=0.3).run()
"""


def test_a_crash_between_qsub_and_its_record_runs_each_task_once(workdir, sge):
    ran, directory = workdir / "ran.txt", workdir / "sweeps" / "crashed"
    (workdir / "controller.py").write_text(QSUB_THEN_CRASH)
    proc = subprocess.run([sys.executable, "controller.py", str(workdir), str(directory), sge.queue, str(ran)],
                          cwd=workdir, env={**os.environ, **sge.env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert Sweep.attach(directory, resume=False).counts() == {"SUBMITTING": 8}  # no job id was recorded
    started = len(ran.read_text().split()) if ran.exists() else 0
    assert 0 < started < 8, f"{started} of 8 tasks had started: the crash point was not tested"
    sweep = Sweep.attach(directory, [_source(sge, slots=8)])
    sweep.wait(timeout=180)
    assert sweep.counts() == {"COMPLETED": 8}
    runs = ran.read_text().split()
    assert len(runs) == 8 and len(set(runs)) == 8, f"{len(runs)} runs for {len(set(runs))} tasks"
    until(lambda: not sge.active_jobs(), 60, "the claimed array tasks ended")
