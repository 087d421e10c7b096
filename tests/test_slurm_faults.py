"""Slurm as real clusters use it, against the real single-node Slurm the suite starts:
whole-array cancel, a user's own scancel, requeues after a node failure or by the job itself,
the checkpoint signal, environment errors and Slurm's own messages in the task folder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import LocalComputeSource, ParameterSpace, SlurmComputeSource, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.model.state import ResourceSpec
from tests.helpers import until


def _source(cluster, name="slurm", slots=4, **kwargs) -> SlurmComputeSource:
    return SlurmComputeSource(name, slots, partition=cluster.partition, slurm_env=dict(cluster.env),
                              poll_interval=0.3, **kwargs)


def _job_pids(sweep_id: str) -> list[int]:
    """Processes of this sweep's jobs still alive on this machine (by their environment)."""
    pids = []
    needle = f"HSM_SWEEP_ID={sweep_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in environ.split(b"\0") and state != "Z":
                pids.append(int(entry.name))
    return pids


def _task_folder(sweep, task_row) -> Path:
    return sweep.directory / "tasks" / (task_row["job_name"] or "not-submitted-yet")


def test_a_throttled_array_then_one_scancel_for_the_whole_sweep(workdir, slurm_cluster):
    """200 tasks with 4 slots: one sbatch (``--array=0-199%4``, Slurm paces it); cancelling the
    sweep is one scancel naming the array: no pending task starts, no job process outlives it."""
    source = _source(slurm_cluster, slots=4)
    read = source.side.read_tasks
    sizes: list[int] = []

    async def counting(job_dirs, claim_ids=()):  # a spy: how many task folders each poll reads
        sizes.append(len(job_dirs))
        return await read(job_dirs, claim_ids)

    source.side.read_tasks = counting
    sweep = Sweep(ParameterSpace(grid={"x": list(range(200)), "sleep": [60]}), ["python", "job.py"], [source],
                  workdir=workdir, poll_interval=0.3).start()
    until(lambda: sweep.counts().get("RUNNING", 0) == 4, timeout=60, what="4 running")
    assert source.commands["sbatch"] == 1, source.commands
    sizes.clear()
    # three more polls (each reads every task Slurm reports): Slurm, not the controller, keeps it at 4
    until(lambda: len(sizes) >= 3, timeout=60, what="3 polls after 4 were running")
    assert sweep.counts().get("RUNNING") == 4 and sweep.counts().get("QUEUED") == 196
    assert sizes and max(sizes) <= 6, sizes  # the running tasks' folders, not the 196 queued ones
    started = [t for _, t in sweep.status().iterrows() if (_task_folder(sweep, t) / "pid").exists()]
    assert len(started) <= 6  # the 4 running (and perhaps a next one starting)
    before = dict(source.commands)
    assert sweep.cancel() == 200
    sweep.wait(timeout=60)
    assert source.commands["scancel"] - before["scancel"] == 1, source.commands
    assert sweep.counts() == {"CANCELLED": 200}
    # decided once Slurm holds no job of the sweep and no job process is left: a task that started
    # after the cancel has written its pid file by then, and none can start any more
    until(lambda: not slurm_cluster.active_jobs(), timeout=60, what="Slurm holding no job of the sweep")
    until(lambda: not _job_pids(sweep.id), timeout=30, what="no job process left")
    ran = [t for _, t in sweep.status().iterrows()
           if (_task_folder(sweep, t) / "pid").exists()
           and (_task_folder(sweep, t) / "pid").read_text().strip() != "never"]
    assert len(ran) <= len(started), "pending tasks started after the cancel"


def test_a_users_own_scancel_ends_the_task_cancelled_and_it_is_never_retried(workdir, slurm_cluster):
    source = _source(slurm_cluster, slots=2)
    sweep = Sweep(ParameterSpace(grid={"x": [0, 1, 2, 3, 4], "sleep": [60]}), ["python", "job.py"], [source],
                  workdir=workdir, poll_interval=0.3, retry={"max_attempts": 3, "retry_failed": True}).start()
    until(lambda: sweep.counts().get("RUNNING", 0) == 2, timeout=60, what="2 running")
    status = sweep.status().set_index("x")
    pending = status[status["state"] == "QUEUED"].iloc[0]
    running = status[status["state"] == "RUNNING"].iloc[0]
    assert pending["job_id"] and "_" in pending["job_id"]  # the id squeue shows, for mapping back
    for row in (pending, running):
        assert slurm_cluster.run("scancel", row["job_id"]).returncode == 0
    until(lambda: (sweep.status().set_index("task_id").loc[[pending["task_id"], running["task_id"]], "state"]
                   == "CANCELLED").all(), timeout=60, what="both cancelled")
    sweep.cancel()
    sweep.wait(timeout=60)  # the run has ended: whatever it decided about the two is in the ledger now
    final = sweep.status().set_index("task_id")
    for row in (pending, running):
        history = sweep.history(row["task_id"])
        assert final.loc[row["task_id"], "attempt"] == 1 and (history["attempt"].dropna() == 1).all(), history
        # never queued again after Slurm's cancel: CANCELLED is its last transition
        assert list(history["state"])[-1] == "CANCELLED" and list(history["state"]).count("CANCELLED") == 1, history
    assert "cancelled outside hsm_notebook" in final.loc[pending["task_id"], "error"]


def test_environment_errors_fail_the_task_in_words_and_slurm_messages_are_kept(workdir, slurm_cluster):
    """A pre_script that fails only inside the job (as a module or conda activate that works on the
    login node but not on the compute node): FAILED with its message.  A time-limit kill: FAILED
    with Slurm's own message in slurm.out in the task folder."""
    failing = _source(slurm_cluster, "envfail", 2, environment={
        "pre_script": ['if [ -n "$SLURM_JOB_ID" ]; then echo "module: unable to locate cuda/99" >&2; exit 7; fi']})
    timed = _source(slurm_cluster, "timed", 2, resources=ResourceSpec(walltime="1"))
    one = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "job.py"], [failing], workdir=workdir,
                poll_interval=0.3).run()
    row = one.status().iloc[0]
    assert row["state"] == "FAILED" and "unable to locate cuda/99" in row["error"], row.to_dict()
    two = Sweep(ParameterSpace(grid={"x": [1], "sleep": [300]}), ["python", "job.py"], [timed], workdir=workdir,
                poll_interval=0.3).start()
    two.wait(timeout=240)
    row = two.status().iloc[0]
    assert row["state"] == "FAILED" and "TIMEOUT" in row["error"], row.to_dict()
    slurm_out = (_task_folder(two, row) / "slurm.out").read_text()
    assert "DUE TO TIME LIMIT" in slurm_out and "DUE TO TIME LIMIT" in two.logs(row["task_id"], "slurm")
    from hsm_notebook.ui.detail_view import DetailView  # what Job detail shows of it

    view = DetailView()
    view.task.value = row["task_id"]
    view.show(two)
    assert "DUE TO TIME LIMIT" in view.body.value and row["job_id"] in view.body.value


CHECKPOINTING = textwrap.dedent('''
    import json, os, signal, subprocess, sys, time
    from hsm_notebook.metrics import log_metrics

    d = os.environ["HSM_TASK_DIR"]
    ckpt = os.path.join(d, "checkpoint.json")
    step = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
    with open(os.path.join(os.environ["RUNS_LOG"]), "a") as f:
        f.write(f"{os.environ['HSM_TASK_ID']} start {step}\\n")

    def checkpoint_and_requeue(signum, frame):
        json.dump({"step": step}, open(ckpt, "w"))
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        subprocess.run(["scontrol", "requeue", job], check=True)
        sys.exit(0)

    signal.signal(signal.SIGUSR1, checkpoint_and_requeue)
    while step < int(os.environ.get("STEPS", "40")):
        time.sleep(0.1)
        step += 1
        if step == 10 and not os.path.exists(ckpt):
            open(os.path.join(d, "ready"), "w").close()
            time.sleep(60)  # waits for the signal
    log_metrics(final_step=step, resumed=os.path.exists(ckpt))
''')


def test_node_failure_and_checkpoint_requeues_run_each_task_once_and_are_visible(workdir):
    """On a private cluster (requeued jobs restart in seconds):

    - a task that ends while slurmd is down is decided by its exit code at once, and Slurm's
      requeued copy does not run it again;
    - a task whose run was killed by the node failure runs again, and both runs' logs are kept;
    - the checkpoint signal (``B:USR1``, as Slurm sends it before the time limit) reaches the
      program, which checkpoints, requeues itself and resumes from the checkpoint.
    """
    from tests.servers.slurm import start_cluster

    cluster = start_cluster(fast_requeue=True)
    runs_log = workdir / "runs.log"
    (workdir / "ckpt.py").write_text(CHECKPOINTING)
    (workdir / "node.py").write_text(textwrap.dedent(f'''
        import os, sys, time
        from hsm_notebook.metrics import log_metrics
        with open({str(runs_log)!r}, "a") as f:
            f.write(os.environ["HSM_TASK_ID"] + " node\\n")
        end = time.time() + float(sys.argv[1].split("=")[1])
        while time.time() < end and not os.path.exists({str(workdir / 'release')!r}):
            time.sleep(0.1)
        log_metrics(done=1)
    '''))
    try:
        env = {"RUNS_LOG": str(runs_log)}
        ckpt = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "ckpt.py"], [_source(cluster, "ckpt")],
                     workdir=workdir, poll_interval=0.3, env=env).start()
        folder = lambda: _task_folder(ckpt, ckpt.status().iloc[0])  # noqa: E731
        until(lambda: (folder() / "ready").exists(), timeout=60, what="the checkpointing job is ready")
        job_id = ckpt.status().iloc[0]["job_id"]
        # what --signal=B:USR1@T does at T seconds before the limit: signal the batch shell only
        assert cluster.run("scancel", "--batch", "--signal=USR1", job_id).returncode == 0
        ckpt.wait(timeout=120)
        row = ckpt.status().iloc[0]
        assert row["state"] == "COMPLETED" and row["attempt"] == 1, row.to_dict()
        assert ckpt.results().iloc[0]["resumed"] == True  # noqa: E712 - a numpy bool
        assert "requeued by Slurm 1 time" in row["error"] and (folder() / "run1" / "stdout.log").exists()
        starts = [line.split()[2] for line in runs_log.read_text().splitlines() if " start " in line]
        assert starts == ["0", "10"]  # the second run resumed from the checkpoint

        source = _source(cluster, "node")
        sweep = Sweep(ParameterSpace(grid={"secs": [3, 300]}), ["python", "node.py"], [source],
                      workdir=workdir, poll_interval=0.3, health_interval=3600).start()
        until(lambda: sweep.counts().get("RUNNING") == 2, timeout=60, what="2 running")
        cluster.stop_slurmd()
        # the 3 s task ends while its node is down: its exit code decides, before any requeue
        until(lambda: sweep.counts().get("COMPLETED") == 1, timeout=30, what="the short task decided")
        _until_requeued = lambda: sweep.counts().get("QUEUED") == 1  # noqa: E731
        until(_until_requeued, timeout=60, what="the long task requeued by Slurm")
        long = sweep.status().set_index("secs").loc[300]
        assert "requeued by Slurm" in (long["detail"] or "")
        cluster.start_slurmd()
        until(lambda: sweep.status().set_index("secs").loc[300, "state"] == "RUNNING", timeout=90,
              what="the long task running again")
        (workdir / "release").write_text("")
        sweep.wait(timeout=120)
        status = sweep.status().set_index("secs")
        assert (status["state"] == "COMPLETED").all() and (status["attempt"] == 1).all()
        assert "requeued by Slurm 1 time" in status.loc[300, "error"]
        assert (sweep.directory / "tasks" / status.loc[300, "job_name"] / "run1" / "stdout.log").exists()
        # decided once Slurm holds no job: the short task's requeued copy has run (and must not have
        # run the program) or was never started
        until(lambda: not cluster.active_jobs(), timeout=120, what="Slurm's requeued copies ended")
        lines = runs_log.read_text().splitlines()
        short = status.loc[3, "task_id"]
        assert sum(1 for line in lines if line == f"{short} node") == 1, lines
    finally:
        cluster.close()


def test_a_source_poll_interval_is_honoured_both_ways(workdir, slurm_cluster):
    """A Slurm source asked to poll every 3 s is polled every ~3 s even in a sweep polling every
    0.2 s (and a sweep's slower interval does not slow a source that asks for a faster one).

    Counted, not timed: beside it, a local source with no interval of its own follows the sweep's
    0.2 s; while that one is polled 30 times (>= 6 s), the Slurm source is polled a few times, far
    fewer than half as often (a source polled at the sweep's pace would be polled as often)."""
    slow = SlurmComputeSource("slow", 2, partition=slurm_cluster.partition, slurm_env=dict(slurm_cluster.env),
                              poll_interval=3.0)
    fast = LocalComputeSource("fast", max_parallel_jobs=1)
    fast_polls: list[int] = []
    poll = fast.poll

    async def counting(job_ids):  # a spy: one call per poll of the fast source
        fast_polls.append(len(job_ids))
        return await poll(job_ids)

    fast.poll = counting
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3], "sleep": [60]}), ["python", "job.py"], [slow, fast],
                  workdir=workdir, poll_interval=0.2, health_interval=3600).start()
    try:
        until(lambda: sweep.counts().get("RUNNING") == 3, timeout=60, what="3 running (2 on Slurm, 1 here)")
        before, fast_before = slow.commands["squeue"], len(fast_polls)
        until(lambda: len(fast_polls) - fast_before >= 30, timeout=120, what="30 polls of the source at 0.2 s")
        polls, fast_n = slow.commands["squeue"] - before, len(fast_polls) - fast_before
        assert 1 <= polls and 2 * polls <= fast_n, (
            f"{polls} squeue calls while the 0.2 s source was polled {fast_n} times")
    finally:
        sweep.cancel()
        sweep.wait(timeout=60)


@pytest.mark.parametrize("ntasks", [2])
def test_srun_starts_one_copy_per_task(workdir, slurm_cluster, ntasks):
    (workdir / "who.py").write_text("import os\nprint('rank', os.environ.get('SLURM_PROCID'), flush=True)\n")
    source = _source(slurm_cluster, "mpi", 1, resources=ResourceSpec(srun=True, extra={"ntasks": str(ntasks)}))
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "who.py"], [source], workdir=workdir,
                  poll_interval=0.3).run()
    row = sweep.status().iloc[0]
    assert row["state"] == "COMPLETED", row.to_dict()
    out = (_task_folder(sweep, row) / "stdout.log").read_text().split("\n")
    assert sorted(line for line in out if line) == [f"rank {i}" for i in range(ntasks)]
    assert os.path.exists(_task_folder(sweep, row) / "slurm.out")
    run_sync(source.cleanup())
