"""A Slurm task requeued while it runs (issue 19, item 7), on a real single-node Slurm: both runs
log steps into the same attempt's metrics.jsonl; each run's steps are kept apart (the wrapper
marks where a new run starts), and ``metrics()`` shows the run that counts, the last one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hsm_notebook import ParameterSpace, SlurmComputeSource, Sweep
from tests.helpers import until

pytestmark = pytest.mark.slurm

TWO_RUNS = textwrap.dedent('''
    import os, pathlib, time
    from hsm_notebook.metrics import log_metrics

    run = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    for i in range(3):
        log_metrics(step=i, loss=10 * run + i)
    if run == 1:
        pathlib.Path(os.environ["HSM_TASK_DIR"], "ready").write_text("")
        time.sleep(600)  # requeued meanwhile
    log_metrics(loss=0.5)
''')


def test_a_task_requeued_while_running_keeps_each_runs_steps_apart(workdir: Path) -> None:
    from tests.servers.slurm import start_cluster

    cluster = start_cluster(fast_requeue=True)  # a requeued job starts again in seconds
    try:
        (workdir / "two_runs.py").write_text(TWO_RUNS)
        source = SlurmComputeSource("slurm", 2, partition=cluster.partition, slurm_env=dict(cluster.env),
                                    poll_interval=0.3)
        sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["python", "two_runs.py"], [source], workdir=workdir,
                      poll_interval=0.3, arg_style="none").start()
        [tid] = list(sweep.status()["task_id"])

        def folder() -> Path:
            return sweep.directory / "tasks" / (sweep.task(tid)["job_name"] or "none")

        until(lambda: (folder() / "ready").exists(), timeout=60, what="the first run has logged its steps")
        until(lambda: len(sweep.metrics(tid, "loss")) == 3, timeout=30, what="the first run's steps in the ledger")
        job_id = sweep.task(tid)["job_id"]
        assert cluster.run("scontrol", "requeue", job_id).returncode == 0
        sweep.wait(timeout=180)
        info = sweep.task(tid)
        assert info["state"] == "COMPLETED" and info["attempt"] == 1, info

        shown = sweep.metrics(tid, "loss")
        assert not shown.duplicated(["attempt", "step", "metric"]).any(), shown
        assert list(shown["value"]) == [20.0, 21.0, 22.0]
        assert set(shown["run"]) == {2}  # the run that counts

        every = sweep.metrics(tid, "loss", runs=True)
        assert sorted(zip(every["run"], every["step"], every["value"], strict=True)) == [
            (1, 0.0, 10.0), (1, 1.0, 11.0), (1, 2.0, 12.0), (2, 0.0, 20.0), (2, 1.0, 21.0), (2, 2.0, 22.0)]
        assert info["metrics_note"] is None  # the marker line is not a user's unreadable line
        assert (folder() / "run1" / "stdout.log").exists()
    finally:
        cluster.close()
