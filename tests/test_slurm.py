"""SlurmComputeSource against a real single-node Slurm (munged, slurmctld, slurmd on loopback)."""

from __future__ import annotations

import pytest

from hsm_notebook import ParameterSpace, SlurmComputeSource, SourceError, Sweep
from hsm_notebook.core.model.state import JobState
from hsm_notebook.sources.slurm import SLURM_STATES
from tests.helpers import job_sweep
from tests.helpers import until as _until


def slurm_source(cluster, name="slurm", slots=500, **kwargs) -> SlurmComputeSource:
    return SlurmComputeSource(name, slots, partition=cluster.partition, slurm_env=dict(cluster.env),
                              poll_interval=0.3, **kwargs)


def test_squeue_records_for_several_array_tasks_stand_for_each():
    from hsm_notebook.sources.slurm import parse_squeue

    seen = parse_squeue("7|0|RUNNING|None\n7|1-4%1|PENDING|JobArrayTaskLimit\n3|N/A|CANCELLED|None\n")
    assert seen["7_0"] == ("RUNNING", "None") and seen["7_*"] == ("PENDING", "JobArrayTaskLimit")
    assert seen["3_*"] == ("CANCELLED", "None")


def test_every_slurm_state_maps_to_a_job_state():
    assert SLURM_STATES["PENDING"] == JobState.QUEUED and SLURM_STATES["COMPLETING"] == JobState.RUNNING
    assert SLURM_STATES["TIMEOUT"] == JobState.FAILED and SLURM_STATES["OUT_OF_MEMORY"] == JobState.FAILED
    assert SLURM_STATES["NODE_FAIL"] == JobState.LOST and SLURM_STATES["PREEMPTED"] == JobState.LOST
    assert SLURM_STATES["CANCELLED"] == JobState.CANCELLED and SLURM_STATES["REQUEUED"] == JobState.QUEUED


def test_fifty_task_array_sweep_lands_in_results(workdir, slurm_cluster):
    source = slurm_source(slurm_cluster)
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": list(range(50))}), poll_interval=0.3)
    sweep.run()
    results = sweep.results()
    assert len(results) == 50 and sorted(results["score"]) == [2.0 * x for x in range(50)]
    assert source.commands["sbatch"] == 1  # one array for all 50 tasks (the setup check counts as "other")
    status = sweep.status()
    assert status["job_name"].notna().all() and (status["source"] == "slurm").all()


def test_arrays_are_chunked_by_max_array_size(workdir, slurm_cluster):
    slurm_cluster.set_max_array_size(5)
    try:
        source = slurm_source(slurm_cluster)
        sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": list(range(12))}), poll_interval=0.3).run()
        assert sweep.counts() == {"COMPLETED": 12}
        assert source.max_array_size == 5 and source.commands["sbatch"] == 3  # 12 tasks in arrays of 5, 5, 2
    finally:
        slurm_cluster.set_max_array_size(1001)


def test_exit_codes_cancel_and_pending_reasons(workdir, slurm_cluster):
    source = slurm_source(slurm_cluster, array_throttle=1)
    space = ParameterSpace(combinations=[{"x": 1, "exit": 3, "sleep": 0}, {"x": 2, "exit": 0, "sleep": 60},
                                         {"x": 3, "exit": 0, "sleep": 60}])
    sweep = job_sweep(workdir, [source], space, poll_interval=0.3).start()
    _until(lambda: sweep.status().set_index("x").loc[1, "state"] == "FAILED", what="x=1 failed")
    row = sweep.status().set_index("x").loc[1]
    assert row["exit_code"] == 3 and "something went wrong in task 1" in row["error"]
    # with %1 only one task of the array runs: the other waits with Slurm's reason
    _until(lambda: "pending:" in str(sweep.status().set_index("x").loc[3, "detail"]), what="a pending reason")
    assert "JobArrayTaskLimit" in sweep.status().set_index("x").loc[3, "detail"]
    sweep.cancel()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"FAILED": 1, "CANCELLED": 2}


def test_slurm_refuses_an_unknown_partition_with_its_own_words(workdir, slurm_cluster):
    source = SlurmComputeSource("s", 10, partition="no-such-partition", slurm_env=dict(slurm_cluster.env))
    with pytest.raises(SourceError, match=r"Slurm refuses these resources: .*(invalid partition|Invalid partition)"):
        job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]}), poll_interval=0.3).run()


def test_a_slurm_source_mixes_with_the_local_one_and_reattaches(workdir, slurm_cluster):
    from hsm_notebook import LocalComputeSource

    sweep = job_sweep(workdir, [LocalComputeSource(max_parallel_jobs=2), slurm_source(slurm_cluster)],
                      ParameterSpace(grid={"x": list(range(20))}, fixed={"sleep": 0.2}), strategy="round_robin",
                      poll_interval=0.3).run()
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all() and set(status["source"]) == {"local", "slurm"}
    again = Sweep.attach(sweep.directory, resume=False)  # rebuilt from the record, resources and all
    assert isinstance(again.sources[1], SlurmComputeSource) and again.sources[1].resources.partition == "debug"


def test_the_panel_adds_a_slurm_cluster_and_launches_on_it(workdir, slurm_cluster, tmp_path, monkeypatch):
    import html

    from hsm_notebook.ui import SweepPanel

    for key, value in slurm_cluster.env.items():
        if key.startswith("SLURM"):
            monkeypatch.setenv(key, value)  # as on a login node: the Slurm commands find their cluster
    panel = SweepPanel(sources=[], refresh_interval=0.1, directory=tmp_path / "s")
    try:
        panel.sources_view.kind.value = "Slurm cluster"
        form = panel.sources_view.form
        form.walltime.value = "two hours"
        panel.sources_view.add_button.click()
        assert "walltime" in html.unescape(panel.message.value) and "D-HH:MM:SS" in html.unescape(panel.message.value)
        form.walltime.value, form.partition.value, form.cpus.value = "10", slurm_cluster.partition, "1"
        panel.sources_view.add_button.click()
        assert [s.source_type for s in panel.sources_view.sources] == ["slurm"]
        panel.editor.command.value = "python job.py"
        panel.editor.workdir.value = str(workdir)
        panel.editor.rows[0][0].value, panel.editor.rows[0][1].value = "x", "range(4)"
        panel.launch_button.click()
        panel.sweep.wait(timeout=60)
        assert panel.sweep.counts() == {"COMPLETED": 4}
    finally:
        panel.close()


def test_slurm_through_an_ssh_login_node(workdir, slurm_cluster, ssh_host):
    from tests.contract.conftest import ssh_source
    from tests.test_ssh import _remote

    login = ssh_source(ssh_host, "login", 1)
    source = SlurmComputeSource("hpc", 100, partition=slurm_cluster.partition, login=login, poll_interval=0.3,
                                slurm_env={"SLURM_CONF": str(slurm_cluster.conf)})
    (workdir / "job.py").write_text(
        "import getpass, os, sys\nfrom hsm_notebook.metrics import log_metrics\n"
        "log_metrics(x=int(sys.argv[1].split('=')[1]), user=getpass.getuser(), dir=os.environ['HSM_TASK_DIR'])\n")
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": list(range(6))}), poll_interval=0.3).run()
    results = sweep.results()
    assert sorted(results["x"]) == list(range(6)) and set(results["user"]) == {ssh_host.user}
    assert results["dir"].str.startswith(f"/home/{ssh_host.user}/.hsm_notebook/sweeps/").all()
    assert source.commands["sbatch"] == 1  # one array, through the SSH connection
    job = sweep.status()["job_name"].iloc[0]
    assert (sweep.directory / "tasks" / job / "stdout.log").exists()  # collected over SSH
    assert "run.sh" in _remote(ssh_host, f"ls {results['dir'].iloc[0]}")


SBATCH_THEN_CRASH = """
import os, sys, time
from hsm_notebook import ParameterSpace, SlurmComputeSource, Sweep
from hsm_notebook.sources import slurm
workdir, directory, partition, ran = sys.argv[1:5]
real = slurm.SlurmComputeSource._submit_array

async def sbatch_then_crash(self, jobs):
    ids = await real(self, jobs)
    deadline = time.monotonic() + 60  # until an array task has started (throttled: the others still wait)
    while not (os.path.exists(ran) and open(ran).read().split()):
        if time.monotonic() > deadline:
            sys.exit("no array task started within 60 s: the crash point cannot be reached")
        time.sleep(0.05)
    os._exit(9)          # the controller dies before it records any job id

slurm.SlurmComputeSource._submit_array = sbatch_then_crash
space = ParameterSpace(grid={"x": list(range(8))}, fixed={"sleep": 2, "append": ran})
source = SlurmComputeSource("slurm", 8, partition=partition, poll_interval=0.3, array_throttle=2)
Sweep(space, ["python", "job.py"], [source], workdir=workdir, directory=directory, poll_interval=0.3).run()
"""


def test_a_crash_between_sbatch_and_its_record_runs_each_task_once(workdir, slurm_cluster):
    import os
    import subprocess
    import sys

    ran, directory = workdir / "ran.txt", workdir / "sweeps" / "crashed"
    (workdir / "controller.py").write_text(SBATCH_THEN_CRASH)
    env = {**os.environ, **slurm_cluster.env}
    proc = subprocess.run([sys.executable, "controller.py", str(workdir), str(directory), slurm_cluster.partition,
                           str(ran)], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert Sweep.attach(directory, resume=False).counts() == {"SUBMITTING": 8}  # no job id was recorded
    started = len(ran.read_text().split()) if ran.exists() else 0
    assert 0 < started < 8, f"{started} of 8 tasks had started: the crash point was not tested"
    sweep = Sweep.attach(directory, [slurm_source(slurm_cluster, slots=8)])
    sweep.wait(timeout=180)
    assert sweep.counts() == {"COMPLETED": 8}
    runs = ran.read_text().split()
    assert len(runs) == 8 and len(set(runs)) == 8, f"{len(runs)} runs for {len(set(runs))} tasks"
    _until(lambda: not slurm_cluster.active_jobs(), 60, "the claimed array tasks ended")
