"""Tests of the Slurm test cluster itself (tests/servers/slurm.py), with the Slurm
client commands directly.  The whole file takes about 40 s, most of it waiting for
slurmctld to notice a stopped slurmd (~29 s)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from tests.helpers import until

from .slurm import SlurmCluster, _alive, start_cluster

# Loads the fixtures if tests/conftest.py does not (a no-op once it lists them).
pytest_plugins = ["tests.servers.slurm_fixtures"]

SQUEUE_FMT = "%i|%A|%F|%K|%j|%T|%r"


def _squeue(c: SlurmCluster, job: str) -> list[list[str]]:
    r = c.run("squeue", "-h", "-r", "-t", "all", "-j", job, "-o", SQUEUE_FMT, check=True)
    return [line.split("|") for line in r.stdout.splitlines()]


def _outdir(tmp_path: Path) -> Path:
    """A directory under /tmp that jobs (root here) write into."""
    d = tmp_path / "out"
    d.mkdir()
    assert str(d).startswith("/tmp/")
    return d


def test_partition_up(slurm_cluster: SlurmCluster):
    c = slurm_cluster
    assert c.env["SLURM_CONF"] == str(c.conf) and c.conf.is_file()
    assert "SLURM_JOB_ID" not in c.env
    r = c.run("sinfo", "-h", "-o", "%P|%a|%D|%N|%t", check=True)
    part, avail, nodes, nodelist, state = r.stdout.strip().split("|")
    assert (part, avail, nodes, nodelist) == (c.partition + "*", "up", "1", c.node)
    assert state in ("idle", "mix", "alloc"), r.stdout
    cfg = c.run("scontrol", "show", "config", check=True).stdout
    assert re.search(r"(?m)^MaxArraySize\s*=\s*1001$", cfg)
    assert re.search(r"CPUTot=8\b", c.run("scontrol", "-o", "show", "node", check=True).stdout)


def test_array_job_completes(slurm_cluster: SlurmCluster, tmp_path: Path):
    c = slurm_cluster
    out = _outdir(tmp_path)
    job = c.sbatch(
        "--array=0-9", "-o", f"{out}/slurm-%A_%a.out",
        "--wrap", f"echo $SLURM_ARRAY_TASK_ID > {out}/out.$SLURM_ARRAY_TASK_ID",
    )
    assert job.isdigit()
    assert c.wait_job(job, timeout=30) == "COMPLETED"
    for i in range(10):
        assert (out / f"out.{i}").read_text() == f"{i}\n"
    rows = _squeue(c, job)
    assert len(rows) == 10, rows  # one line per array task
    for jid, raw_id, array_id, task, name, state, reason in rows:
        assert jid == f"{job}_{task}" and array_id == job and raw_id.isdigit()
        assert (name, state, reason) == ("wrap", "COMPLETED", "None")
    assert sorted(int(r[3]) for r in rows) == list(range(10))
    # scontrol -o show job ARRAY_ID: one key=value line per task
    lines = c.run("scontrol", "-o", "show", "job", job, check=True).stdout.splitlines()
    assert len(lines) == 10
    assert all(f"ArrayJobId={job} " in ln and " JobState=COMPLETED " in ln and " ExitCode=0:0 " in ln
               for ln in lines)


def test_failed_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    c = slurm_cluster
    job = c.sbatch("-o", f"{_outdir(tmp_path)}/slurm-%j.out", "--wrap", "exit 3")
    assert c.wait_job(job) == "FAILED"
    info = c.show_job(job)
    assert (info["JobState"], info["ExitCode"], info["Reason"]) == ("FAILED", "3:0", "NonZeroExitCode")
    assert _squeue(c, job) == [[job, job, job, "N/A", "wrap", "FAILED", "NonZeroExitCode"]]
    r = c.run("scontrol", "-o", "show", "job", "999999")
    assert r.returncode == 1 and "Invalid job id specified" in r.stderr


def test_cancelled_job(slurm_cluster: SlurmCluster, tmp_path: Path):
    c = slurm_cluster
    job = c.sbatch("-o", f"{_outdir(tmp_path)}/slurm-%j.out", "--wrap", "sleep 300")
    c.wait_job(job, states={"RUNNING"})
    c.run("scancel", job, check=True)
    assert c.wait_job(job) == "CANCELLED"
    info = c.show_job(job)
    # SIGTERM reaches the batch shell and its sleep together: the shell dies of it (0:15) or first
    # sees sleep die and exits 143 (143:0), depending on the load
    assert info["JobState"] == "CANCELLED" and info["ExitCode"] in ("0:15", "143:0"), info
    assert _squeue(c, job)[0][5] == "CANCELLED"


def test_max_array_size(slurm: SlurmCluster, tmp_path: Path):
    c = slurm
    out = _outdir(tmp_path)
    # An array job before the change: slurmctld caches MaxArraySize on the first
    # array job, so a plain `scontrol reconfigure` would not be enough.
    first = c.sbatch("--array=0-1", "-o", "/dev/null", "--wrap", "true")
    c.wait_job(first)
    c.set_max_array_size(5)
    assert re.search(r"(?m)^MaxArraySize\s*=\s*5$", c.run("scontrol", "show", "config").stdout)
    r = c.run("sbatch", "--array=0-9", "-o", "/dev/null", "--wrap", "true")
    assert r.returncode != 0
    assert "Invalid job array specification" in r.stderr, r.stderr
    r = c.run("sbatch", "--array=3-7", "-o", "/dev/null", "--wrap", "true")  # index 7 >= 5
    assert r.returncode != 0 and "array" in r.stderr
    ok = c.sbatch("--array=0-4", "-o", "/dev/null", "--wrap", f"touch {out}/t.$SLURM_ARRAY_TASK_ID")
    assert c.wait_job(ok) == "COMPLETED"
    assert sorted(p.name for p in out.iterdir()) == [f"t.{i}" for i in range(5)]
    # the job state survived the slurmctld restart
    assert c.job_state(first) == "COMPLETED"


def test_stop_and_start_slurmd(slurm: SlurmCluster, tmp_path: Path):
    c = slurm
    out = _outdir(tmp_path)
    job = c.sbatch("-o", f"{out}/slurm-%j.out", "--wrap", "sleep 300")
    c.wait_job(job, states={"RUNNING"})
    until(lambda: len(c.job_pids()) >= 2, 30, "the job's processes (slurmstepd, slurm_script, sleep)")
    running = c.job_pids()
    t0 = time.monotonic()
    c.stop_slurmd()
    assert not c.slurmd_running()
    # slurmctld notices after SlurmdTimeout + a ping cycle: idle*/mix* (~16 s),
    # then down* (~29 s), and requeues the running job (RUNNING -> PENDING).
    deadline = t0 + 50
    while not (c.node_state() == "down*" and c.job_state(job) == "PENDING"):
        assert time.monotonic() < deadline, (c.node_state(), c.job_state(job))
        time.sleep(0.25)
    node = c.run("scontrol", "-o", "show", "node", c.node, check=True).stdout
    assert "State=DOWN+NOT_RESPONDING" in node and "Reason=Not responding" in node
    info = c.show_job(job)
    assert info["JobState"] == "PENDING" and info["Restarts"] == "1"
    # The requeued job's first run is still going: nothing kills it without slurmd.
    assert all(_alive(p) for p in running)
    c.start_slurmd()  # ReturnToService=2: the node comes back by itself
    assert c.node_state() in ("idle", "mix")
    # slurmd re-registers, slurmctld sees a step of a PENDING job and kills it.
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in running):
        assert time.monotonic() < deadline, "first run of the requeued job not killed"
        time.sleep(0.1)
    assert c.job_state(job) == "PENDING"  # eligible again after cred_expire (120 s)
    again = c.sbatch("-o", f"{out}/slurm-%j.out", "--wrap", f"touch {out}/after")
    assert c.wait_job(again) == "COMPLETED" and (out / "after").exists()


def test_close_cleans_up(tmp_path: Path):
    """A second, private cluster: close() cancels jobs, stops all daemons and job
    processes by PID and removes the temp dir."""
    c = start_cluster(fast_requeue=True)
    try:
        job = c.sbatch("-o", "/dev/null", "--wrap", "sleep 300")
        c.wait_job(job, states={"RUNNING"})
        until(c.job_pids, 30, "the job's processes")
        procs = c.job_pids()
        daemons = [c.munged_pid, c.slurmctld_pid, c.slurmd_pid]
        c.stop_slurmd()  # the hard case: slurmstepd and the job outlive slurmd
        assert all(_alive(p) for p in procs)
    finally:
        c.close()
    assert not any(_alive(p) for p in procs + daemons)
    assert not c.dir.exists()
    assert not os.path.exists(c.munge_socket)
