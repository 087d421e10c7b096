"""PBSComputeSource (PBS Pro / OpenPBS and Torque) WITHOUT a PBS server: none can be installed on
these machines.  What is tested here is tested against golden job scripts (tests/data/pbs/*_array.sh)
and command outputs written from the PBS Pro and Torque documentation (tests/data/pbs/, see its
README), and a whole sweep runs through FAKE stand-ins for qsub/qstat/qdel (``FAKE_PBS`` below: they
start the array's tasks as local processes and print qstat records in each flavor's format).  None
of this proves that a real PBS server reads our scripts as we think; Grid Engine and Slurm are tested
live (tests/test_sge*.py, tests/test_slurm*.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, JobState, ParameterSpace, PBSComputeSource, ResourceSpec, SourceError, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.base import registry
from hsm_notebook.core.spec.project import ProjectConfig
from hsm_notebook.sources import pbs_tasks
from hsm_notebook.sources.slurm_login import TaskFiles
from tests.contract.test_describe import round_trip
from tests.helpers import until
from tests.servers.proc import _alive

DATA = Path(__file__).parent / "data" / "pbs"
GOLDEN = ResourceSpec(walltime="90", cpus=4, mem="16G", gpus=1, partition="workq", account="lab",
                      extra={"W": "group_list=ml", "m": "n"}, modules=("cuda/12.1",))

# -- golden scripts and options ---------------------------------------------------------------


def _rendered(flavor: str) -> str:
    source = PBSComputeSource("p", 50, flavor=flavor, resources=GOLDEN)
    source.tasks_dir, source.slurm_dir = "/scratch/ana/sweep/tasks", "/scratch/ana/sweep/slurm"
    return source.render_array("hsm-lr-sweep-20261208", "/scratch/ana/sweep/slurm/chunk-1.jobs")


@pytest.mark.parametrize("flavor", ["pro", "torque"])
def test_job_scripts_match_the_golden_text(flavor):
    assert _rendered(flavor) == (DATA / f"{flavor}_array.sh").read_text()


def test_arrays_throttles_and_single_jobs_per_flavor():
    pro = PBSComputeSource("p", 50, flavor="pro")
    torque = PBSComputeSource("t", 50, flavor="torque")
    for source in (pro, torque):
        source.slurm_dir = "/s/slurm"
    assert pro.submit_argv("a.sh", 200, 50) == ["qsub", "-J", "0-199", "-W", "max_run_subjobs=50", "-o", "/s/slurm/",
                                                "a.sh"]
    assert torque.submit_argv("a.sh", 200, 50) == ["qsub", "-t", "0-199%50", "-o", "/s/slurm/", "a.sh"]
    assert pro.submit_argv("a.sh", 1, None) == torque.submit_argv("a.sh", 1, None) == ["qsub", "-o", "/s/slurm/",
                                                                                        "a.sh"]
    assert pro.status_argv(["1234[].pbs-head"]) == ["qstat", "-f", "-F", "json", "-x", "-t", "1234[].pbs-head"]
    assert torque.status_argv(["77[].torque-head"]) == ["qstat", "-x", "-t", "77[].torque-head"]
    assert pro.tasks.submitted("1234[].pbs-head", 3) == ["1234[0].pbs-head", "1234[1].pbs-head", "1234[2].pbs-head"]
    assert pro.tasks.submitted("1240.pbs-head", 1) == ["1240.pbs-head"]  # one task: a plain job
    assert pro.array_of("1234[17].pbs-head") == "1234[].pbs-head" and pro.array_of("1240.pbs-head") == "1240.pbs-head"
    assert pro.task_id("1234[].pbs-head", "*") == "1234[*].pbs-head"


@pytest.mark.parametrize("spec, flavor, field", [
    (ResourceSpec(walltime="two hours"), "pro", "walltime"),
    (ResourceSpec(qos="high"), "pro", "qos"),
    (ResourceSpec(constraint="a100"), "torque", "constraint"),
    (ResourceSpec(srun=True), "pro", "srun"),
    (ResourceSpec(extra={"group_list": "x"}), "pro", "extra"),
    (ResourceSpec(partition="work q"), "torque", "partition"),
    (ResourceSpec(), "slurm", "flavor"),
])
def test_a_bad_resource_or_flavor_is_refused_when_the_source_is_made(spec, flavor, field):
    with pytest.raises(ConfigError) as info:
        PBSComputeSource("p", 1, flavor=flavor, resources=spec)
    assert info.value.field == field


# -- recorded qstat outputs -> JobStates ---------------------------------------------------------


def _decide(source, seen, files):
    return {j: source.tasks.decide(j, seen.get(j), files.get(j)) for j in files}


def test_pbs_pro_records_read_into_states_reasons_and_notes():
    source = PBSComputeSource("p", 10, flavor="pro")
    seen = source.parse_status((DATA / "pro_qstat.json").read_text())
    assert "1234[].pbs-head" not in seen  # the array's own record: its subjobs are listed
    ran = TaskFiles(0, False, 0, False)
    files = {"1234[0].pbs-head": ran, "1234[1].pbs-head": TaskFiles(None, False, 0, False),
             "1234[2].pbs-head": TaskFiles(None, False, 0, False), "1234[3].pbs-head": TaskFiles(None, False, 0, False),
             "1234[4].pbs-head": ran, "1234[5].pbs-head": None, "1234[6].pbs-head": None,
             "1240.pbs-head": TaskFiles(None, False, 0, True)}
    states = _decide(source, seen, files)
    assert states == {
        "1234[0].pbs-head": JobState.COMPLETED,  # X, Exit_status 0, and its exit code file
        "1234[1].pbs-head": JobState.FAILED,  # Exit_status -29: killed at its walltime
        "1234[2].pbs-head": JobState.LOST,  # X, Exit_status 0, yet no exit code: not a success
        "1234[3].pbs-head": JobState.RUNNING,
        "1234[4].pbs-head": JobState.COMPLETED,  # E (exiting) but its exit code is written: decided
        "1234[5].pbs-head": JobState.QUEUED,
        "1234[6].pbs-head": JobState.QUEUED,  # H: held, with the server's comment
        "1240.pbs-head": JobState.CANCELLED,  # F without an exit status, never started: a qdel
    }
    assert source.tasks.detail("1234[5].pbs-head") == ("pending: Not Running: Insufficient amount of resource: "
                                                       "ncpus (R: 1 A: 0 T: 2)")
    assert "held, too many failed attempts" in source.tasks.detail("1234[6].pbs-head")
    assert "PBS killed it at its walltime limit (Exit_status -29)" in source.tasks.note("1234[1].pbs-head",
                                                                                        JobState.FAILED)
    assert "cancelled outside hsm_notebook (qdel)" in source.tasks.note("1240.pbs-head", JobState.CANCELLED)


def test_torque_records_read_into_states():
    source = PBSComputeSource("t", 10, flavor="torque")
    seen = source.parse_status((DATA / "torque_qstat.xml").read_text())
    files = {f"77[{i}].torque-head": TaskFiles(0 if i == 0 else None, False, 0, False) for i in range(5)}
    assert [s.value for s in _decide(source, seen, files).values()] == ["COMPLETED", "LOST", "RUNNING", "QUEUED",
                                                                         "QUEUED"]
    assert "could not run it (Exit_status -3" in source.tasks.note("77[1].torque-head", JobState.LOST)


def test_a_run_ended_by_a_signal_is_cancelled_in_words_ours_or_a_users():
    source = PBSComputeSource("p", 10)
    source.tasks.submitted("9[].h", 2)
    killed = TaskFiles(143, True, 0, False)  # SIGTERM (qdel) noted by the wrapper, exit code 143
    source.tasks.cancel_names(["9[0].h"])  # ours
    assert source.tasks.decide("9[0].h", (pbs_tasks.DONE, "Exit_status 0"), killed) == JobState.CANCELLED
    assert source.tasks.decide("9[1].h", (pbs_tasks.DONE, "Exit_status 0"), killed) == JobState.CANCELLED
    assert "cancelled outside hsm_notebook (qdel) while it ran" in source.tasks.note("9[1].h", JobState.CANCELLED)
    assert source.tasks.note("9[0].h", JobState.CANCELLED) == ""  # our own cancel needs no words


# -- stand-in commands ---------------------------------------------------------------------------

#: A FAKE PBS (qsub, qstat, qdel by the name it is called with): NOT a PBS server.  qsub starts every
#: task of the array at once as a local process (env PBS_JOBID and PBS_ARRAY_INDEX / PBS_ARRAYID, as
#: PBS sets them) and prints the array's id; qstat prints each task as the flavor's recorded format
#: does (JSON / XML), running while its process lives, finished after; qdel sends SIGTERM, as PBS does.
FAKE_PBS = textwrap.dedent('''
    import json, os, re, signal, subprocess, sys
    from pathlib import Path
    state, flavor = Path(os.environ["FAKE_PBS"]), os.environ["FAKE_PBS_FLAVOR"]
    cmd, args = Path(sys.argv[0]).name, sys.argv[1:]
    with open(state / "log", "a") as f:
        f.write(json.dumps([cmd, *args]) + "\\n")
    jobs = state / "jobs"
    jobs.mkdir(exist_ok=True)

    def alive(pid):
        try:
            return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] not in "ZX"
        except OSError:
            return False

    if cmd == "qsub":
        seq = len(list(state.glob("script-*"))) + 100
        (state / f"script-{seq}").write_text(Path(args[-1]).read_text())
        spec = args[args.index("-J") + 1] if "-J" in args else args[args.index("-t") + 1] if "-t" in args else None
        n = int(spec.split("%")[0].split("-")[1]) + 1 if spec else 1
        array = f"{seq}[].fakepbs" if spec else f"{seq}.fakepbs"
        for i in range(n):
            job = array.replace("[]", f"[{i}]")
            env = {**os.environ, "PBS_JOBID": job}
            if spec:
                env["PBS_ARRAY_INDEX" if flavor == "pro" else "PBS_ARRAYID"] = str(i)
            p = subprocess.Popen(["/bin/sh", args[-1]], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            (jobs / job).write_text(str(p.pid))
        print(array)
    elif cmd == "qstat":
        wanted = {a for a in args if "." in a}
        found = {}
        for f in jobs.iterdir():
            if f.name in wanted or re.sub(r"\\[\\d+\\]", "[]", f.name) in wanted:
                pid = int(f.read_text())
                found[f.name] = "R" if alive(pid) else ("C" if flavor == "torque" else "X")
        if not found:
            sys.exit(print(f"qstat: Unknown Job Id {sorted(wanted)[0]}", file=sys.stderr) or 153)
        if flavor == "pro":
            records = {j: {"job_state": s, **({"Exit_status": 0} if s == "X" else {})} for j, s in found.items()}
            print(json.dumps({"pbs_version": "fake", "Jobs": records}))
        else:
            print("<Data>" + "".join(f"<Job><Job_Id>{j}</Job_Id><job_state>{s}</job_state>"
                                     + ("<exit_status>0</exit_status>" if s == "C" else "") + "</Job>"
                                     for j, s in found.items()) + "</Data>")
    elif cmd == "qdel":
        for a in args:
            for f in jobs.iterdir():
                if f.name == a or re.sub(r"\\[\\d+\\]", "[]", f.name) == a:
                    try:
                        os.killpg(int(f.read_text()), signal.SIGTERM)
                    except ProcessLookupError:
                        pass
    else:  # qstat -B and friends for setup
        sys.exit(f"{cmd}: not faked")
''')


@pytest.fixture()
def fake_pbs(tmp_path):
    """A folder with the FAKE qsub/qstat/qdel first on PATH; the processes they start are killed by PID."""
    bin_dir, state = tmp_path / "fakebin", tmp_path / "fakestate"
    bin_dir.mkdir()
    state.mkdir()
    (bin_dir / "fake_pbs.py").write_text(f"#!{sys.executable}\n{FAKE_PBS}")
    (bin_dir / "fake_pbs.py").chmod(0o755)
    for name in ("qsub", "qstat", "qdel"):
        (bin_dir / name).symlink_to(bin_dir / "fake_pbs.py")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_PBS": str(state)}
    yield env, state
    for f in (state / "jobs").glob("*"):
        pid = int(f.read_text())
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)


def _log(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "log").read_text().splitlines()]


@pytest.mark.parametrize("flavor", ["pro", "torque"])
def test_a_sweep_runs_through_stand_in_pbs_commands(workdir, fake_pbs, flavor, monkeypatch):
    env, state = fake_pbs
    monkeypatch.setattr(PBSComputeSource, "probe", lambda self: _no_probe())  # the fakes do not answer qstat -B
    source = PBSComputeSource("pbs", 3, flavor=flavor, pbs_env={**env, "FAKE_PBS_FLAVOR": flavor}, poll_interval=0.3)
    space = ParameterSpace(combinations=[{"x": x, "exit": 3 if x == 4 else 0} for x in (1, 2, 3, 4)])
    sweep = Sweep(space, ["python", "job.py"], [source], workdir=workdir, poll_interval=0.3).run()
    status = sweep.status().set_index("x")
    assert list(status["state"]) == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    assert status.loc[4, "exit_code"] == 3 and "something went wrong in task 4" in status.loc[4, "error"]
    assert sorted(sweep.results()["score"]) == [2.0, 4.0, 6.0]
    calls = [c[0] for c in _log(state)]
    assert calls.count("qsub") == 1 and calls.count("qdel") == 0  # one array: -J 0-3 (pro) / -t 0-3%3 (torque)
    qsub = next(c for c in _log(state) if c[0] == "qsub")
    assert (["-J", "0-3", "-W", "max_run_subjobs=3"] if flavor == "pro" else ["-t", "0-3%3"]) == qsub[1:-3]
    ids = set(sweep.status()["job_id"])
    assert ids == {"100[0].fakepbs", "100[1].fakepbs", "100[2].fakepbs", "100[3].fakepbs"}


def test_a_cancel_is_one_qdel_and_a_users_own_qdel_is_noted(workdir, fake_pbs, monkeypatch):
    env, state = fake_pbs
    monkeypatch.setattr(PBSComputeSource, "probe", lambda self: _no_probe())
    source = PBSComputeSource("pbs", 3, pbs_env={**env, "FAKE_PBS_FLAVOR": "pro"}, poll_interval=0.3)
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3], "sleep": [60]}), ["python", "job.py"], [source],
                  workdir=workdir, poll_interval=0.3, retry={"max_attempts": 3, "retry_failed": True}).start()
    try:
        until(lambda: sweep.counts().get("RUNNING", 0) == 3
              and all((sweep.directory / "tasks" / n / "pid").exists() for n in sweep.status()["job_name"]),
              timeout=60, what="3 running")
        mine = sweep.status().iloc[0]
        subprocess.run(["qdel", mine["job_id"]], env={**os.environ, **env, "FAKE_PBS_FLAVOR": "pro"}, check=True)
        until(lambda: sweep.status().set_index("task_id").loc[mine["task_id"], "state"] == "CANCELLED", timeout=60,
              what="the task a user deleted")
        error = sweep.status().set_index("task_id").loc[mine["task_id"], "error"]
        assert "cancelled outside hsm_notebook (qdel) while it ran" in error and "not retried" in error
        before = [c[0] for c in _log(state)].count("qdel")
        sweep.cancel()
        sweep.wait(timeout=60)
    finally:
        if sweep.running:
            sweep.cancel()
    assert sweep.counts() == {"CANCELLED": 3}
    qdels = [c for c in _log(state) if c[0] == "qdel"][before:]
    assert len(qdels) == 1, qdels  # the two others in one qdel


async def _no_probe() -> None:
    return None


def test_probe_reads_the_server_and_its_array_limit(tmp_path):
    for flavor, out, size in (("pro", "pro_qstat_B.json", 512), ("torque", "torque_qstat_B.txt", 2000)):
        fake = tmp_path / flavor
        fake.mkdir()
        (fake / "qstat").write_text(f"#!/bin/sh\ncat {DATA / out}\n")
        (fake / "qstat").chmod(0o755)
        source = PBSComputeSource("p", 1, flavor=flavor, pbs_env={"PATH": f"{fake}:{os.environ['PATH']}"})
        run_sync(source.probe())
        assert source.max_array_size == size
    down = tmp_path / "down"
    down.mkdir()
    (down / "qstat").write_text("#!/bin/sh\necho 'Connection refused' >&2\necho 'qstat: cannot connect to server "
                                "pbs-head (errno=111)' >&2\nexit 2\n")
    (down / "qstat").chmod(0o755)
    source = PBSComputeSource("p", 1, pbs_env={"PATH": f"{down}:{os.environ['PATH']}"})
    with pytest.raises(SourceError, match="cannot talk to the PBS server here .*cannot connect to server"):
        run_sync(source.probe())


def test_health_reads_the_queues(tmp_path):
    (tmp_path / "qstat").write_text(f"#!/bin/sh\ncat {DATA / 'pro_qstat_Q.txt'}\n")
    (tmp_path / "qstat").chmod(0o755)
    source = PBSComputeSource("p", 1, pbs_env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    health = run_sync(source.health_check())
    assert health["status"] == "degraded" and "gpu" in health["reason"]


def test_pbs_and_sge_sources_round_trip_and_come_from_a_reference_project(tmp_path):
    """``backend: sge|pbs`` in a reference project's .hsm/config.yaml: the records build the sources."""
    from hsm_notebook import SGEComputeSource
    from tests.contract.conftest import ssh_source  # noqa: F401 - the SSH source class is registered with it

    round_trip(PBSComputeSource("p", 5, flavor="torque", resources=GOLDEN, pbs_env={"PBS_SERVER": "head"}))
    round_trip(SGEComputeSource("s", 5, queue="gpu.q", pe="mpi", resources=ResourceSpec(cpus=2)))
    (tmp_path / ".hsm").mkdir()
    (tmp_path / ".hsm" / "config.yaml").write_text(textwrap.dedent("""
        distributed:
          enabled: true
          local_max_jobs: 0
          remotes:
            grid:
              host: grid.example.org
              backend: sge
              max_parallel_jobs: 50
              spec: {walltime: "2:00:00", cpus_per_task: 4, partition: gpu.q}
            pro:
              host: pbs.example.org
              backend: pbs
              flavor: torque
              spec: {mem: 8G}
    """))
    project = ProjectConfig.load(tmp_path / ".hsm" / "config.yaml", machine=None)
    grid, pro = (registry.rebuild(d) for d in project.source_descriptions())
    assert isinstance(grid, SGEComputeSource) and grid.resources.partition == "gpu.q" and grid.login.target.host == \
        "grid.example.org"
    assert isinstance(pro, PBSComputeSource) and pro.flavor == "torque" and pro.directives(pro.resources) == [
        "#PBS -l mem=8192mb"]
    (tmp_path / ".hsm" / "config.yaml").write_text("distributed:\n  enabled: true\n  remotes:\n    x:\n"
                                                   "      backend: sge\n      flavor: pro\n")
    with pytest.raises(ConfigError, match="flavor is for backend: pbs"):
        ProjectConfig.load(tmp_path / ".hsm" / "config.yaml", machine=None).source_descriptions()
