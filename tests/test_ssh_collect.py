"""SSHComputeSource: finished jobs' folders coming home (streamed, per job, by pattern), a
remote that lost its files (a reboot), and the per-sweep remote folder removed on success.

Real loopback sshd.  Session hosts are shared; each test uses its own ``remote_root`` so
removing it (or its sweep folders) touches no other test.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import textwrap

import asyncssh
import pytest

from hsm_notebook import ConfigError, JobState, ParameterSpace
from hsm_notebook.core._loop import run_sync
from hsm_notebook.sources.ssh import SSHComputeSource
from tests.contract.conftest import ssh_source
from tests.helpers import job_sweep, until

#: 1 MiB that the job writes ``mb`` times to stdout (so the test knows the hash without the bytes).
BLOCK = bytes(range(256)) * 4096

JOB = textwrap.dedent(
    '''
    import json, os, shutil, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    d = os.environ["HSM_TASK_DIR"]
    block = bytes(range(256)) * 4096
    sizes = dict(pair.split(":") for pair in args.get("sizes", "").split("/") if pair)  # x -> MiB of stdout
    for _ in range(int(sizes.get(args.get("x"), 0))):
        sys.stdout.buffer.write(block)
    if args.get("ckpt"):
        with open(os.path.join(d, "ckpt.bin"), "wb") as f:
            f.write(os.urandom(int(args["ckpt"]) << 20))
        os.makedirs(os.path.join(d, "eval"))
        with open(os.path.join(d, "eval", "acc.json"), "w") as f:
            json.dump({"acc": 0.5}, f)
        with open(os.path.join(d, "notes.txt"), "w") as f:
            f.write("not collected")
    time.sleep(float(args.get("sleep", 0)))
    if int(args.get("exit", 0)):
        sys.exit(int(args["exit"]))
    from hsm_notebook.metrics import log_metrics
    log_metrics(y=int(args.get("x", 0)) * 2)
    '''
)


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def _root() -> str:
    return f"~/.hsm_collect_{secrets.token_hex(3)}"


def _remote(h, command: str) -> str:
    async def go():
        async with asyncssh.connect(**h.connect_kwargs()) as conn:
            return (await conn.run(command)).stdout
    return run_sync(go())


def _remote_exists(h, path: str) -> bool:
    return _remote(h, f"[ -e {path} ] && echo yes || echo no").strip() == "yes"


def _digest(mb: int) -> str:
    h = hashlib.sha256()
    for _ in range(mb):
        h.update(BLOCK)
    return h.hexdigest()


def _file_digest(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_big_job_folders_come_home_while_the_other_tasks_complete(project, ssh_host):
    """A 200 MB and a 3 MB stdout (over asyncssh's 2 MiB channel buffer) are collected whole,
    and the other tasks of the sweep complete meanwhile (the issue: 0 of 20 did)."""
    sizes = {0: 200, 1: 3}
    source = ssh_source(ssh_host, "big", 3, remote_root=_root())
    space = ParameterSpace(grid={"x": list(range(12))}, fixed={"sizes": "0:200/1:3"})  # bare in Hydra syntax
    sweep = job_sweep(project, [source], space).start().wait(timeout=180)
    assert sweep.counts() == {"COMPLETED": 12}, sweep.status()[["state", "error"]]
    status = sweep.status().set_index("x")
    for x in range(12):
        out = sweep.directory / "tasks" / status.loc[x, "job_name"] / "stdout.log"
        mb = sizes.get(x, 0)
        assert out.stat().st_size == mb << 20
        if mb:
            assert _file_digest(out) == _digest(mb)
    assert sorted(sweep.results()["y"]) == [2 * x for x in range(12)]


def test_a_finished_job_whose_remote_folder_vanished_fails_alone(project, ssh_host):
    """The folder of one finished job is removed on the remote before it is collected (as a
    reboot that empties the remote root does): that task alone is LOST, with the reason; the
    others of the same collection are recorded with their metrics."""
    source = ssh_source(ssh_host, "vanish", 4, remote_root=_root())
    collect = source.collect_results
    removed = []

    async def vanish_then_collect(job_ids=None):
        for job_id in job_ids or []:
            if not removed and source.job_names.get(job_id, "").startswith(victim):
                await source.conn.run(f"rm -rf {source.jobs.tasks_dir}/{source.job_names[job_id]}")
                removed.append(job_id)
        return await collect(job_ids)

    source.collect_results = vanish_then_collect
    sweep = job_sweep(project, [source], ParameterSpace(grid={"x": list(range(8))}, fixed={"sleep": 0.3}),
                      retry={"max_attempts": 1})
    victim = sweep.status().set_index("x").loc[5, "task_id"]
    sweep.start()
    sweep.wait(timeout=60)
    assert removed
    status = sweep.status().set_index("x")
    assert status.loc[5, "state"] == "LOST"
    assert "is gone (was the host rebooted or the folder removed?)" in status.loc[5, "error"]
    assert sweep.counts() == {"COMPLETED": 7, "LOST": 1}
    assert sorted(sweep.results()["y"]) == [2 * x for x in range(8) if x != 5]


@pytest.mark.parametrize("via", ["tar", "sftp"])
def test_collect_results_does_not_raise_for_one_missing_folder(project, ssh_host, via):
    """The source's own contract: one collection call for three finished jobs, one folder gone
    (by the tar stream, and by SFTP as on a host without tar)."""
    source = ssh_source(ssh_host, "ref", 3, remote_root=_root(), python_path="python", script_path="job.py",
                        project_dir=str(project))
    sweep_dir = project / "runs" / "ref"
    try:
        assert run_sync(source.setup(sweep_dir, "ref-collect"))
        source.jobs.tar = via == "tar"
        ids = [run_sync(source.submit_job({"x": x}, f"job_{x}", "ref-collect")) for x in range(3)]
        until(lambda: all(run_sync(source.get_job_status(j)) == JobState.COMPLETED for j in ids), 30, "jobs done")
        run_sync(source.conn.run(f"rm -rf {source.jobs.tasks_dir}/job_1"))
        assert run_sync(source.collect_results(ids)) is True
        outcomes = {j: run_sync(source.outcome(j, JobState.COMPLETED)) for j in ids}
    finally:
        run_sync(source.cleanup())
    assert outcomes["job_0"].state == JobState.COMPLETED and outcomes["job_0"].metrics == {"y": 0}
    assert outcomes["job_2"].state == JobState.COMPLETED and outcomes["job_2"].metrics == {"y": 4}
    lost = outcomes["job_1"]
    assert lost.state == JobState.LOST
    assert f"{source.jobs.tasks_dir}/job_1" in lost.error and "is gone (was the host rebooted" in lost.error


def test_the_remote_root_emptied_mid_sweep_is_set_up_again(project, ssh_host):
    """``rm -rf`` of the whole remote root while the sweep runs (connection kept): the source
    makes the tasks dir, the helper lib, the project copy and the events watcher again, and
    the later tasks run (they need the uploaded lib for their metrics)."""
    root = _root()
    source = ssh_source(ssh_host, "wiped", 1, remote_root=root)
    sweep = job_sweep(project, [source], ParameterSpace(grid={"x": list(range(6))}, fixed={"sleep": 0.2}))
    sweep.start()
    until(lambda: sweep.counts().get("COMPLETED", 0) >= 2, 60, "two tasks done")
    _remote(ssh_host, f"rm -rf {root}")
    sweep.wait(timeout=90)
    assert sweep.counts() == {"COMPLETED": 6}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["y"]) == [2 * x for x in range(6)]


def test_a_reboot_that_emptied_the_remote_root_is_set_up_again(project, ssh_server, ssh_host_fresh):
    """A reboot: every process of the user dies (jobs, connections) and the remote root is empty.
    The source reconnects, sets the remote up again and the sweep completes."""
    h = ssh_host_fresh
    source = ssh_source(h, "rebooted", 1, remote_root="~/.hsm_notebook")
    sweep = job_sweep(project, [source], ParameterSpace(grid={"x": list(range(5))}, fixed={"sleep": 0.5}))
    sweep.start()
    until(lambda: sweep.counts().get("COMPLETED", 0) >= 2, 60, "two tasks done")
    ssh_server.stop_listener(h)  # down: its processes die, its tmpfs-like root comes back empty
    ssh_server.kill_user_processes(h)
    shutil.rmtree(h.home / ".hsm_notebook")
    ssh_server.restart_listener(h)
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 5}, sweep.status()[["state", "error"]]


def test_collect_patterns_leave_the_checkpoint_on_the_remote(project, ssh_host):
    root = _root()
    patterns = ["*.log", "eval/acc.json"]
    source = ssh_source(ssh_host, "picky", 2, remote_root=root, collect=patterns)
    assert source.describe()["collect"] == patterns
    assert SSHComputeSource.from_description(source.describe()).collect == patterns
    sweep = job_sweep(project, [source], ParameterSpace(grid={"x": [1, 2]}, fixed={"ckpt": 5}))
    sweep.run()
    assert sweep.counts() == {"COMPLETED": 2}
    name = sweep.status()["job_name"].iloc[0]
    local = sweep.directory / "tasks" / name
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    # the contract files always come back, then what the patterns name; the rest stays there
    assert {"exit_code", "pid", "stdout.log", "stderr.log", "metrics.json", "params.json", "eval/acc.json"} <= files
    assert not files & {"ckpt.bin", "notes.txt"}
    assert sorted(sweep.results()["y"]) == [2, 4]
    remote = f"{root}/sweeps/{sweep.id}/tasks/{name}"
    assert _remote(ssh_host, f"stat -c %s {remote}/ckpt.bin").strip() == str(5 << 20)  # kept for the user


@pytest.mark.parametrize("case", ["success", "a task failed", "keep_remote"])
def test_the_remote_sweep_folder_is_removed_after_success_only(project, ssh_host, case):
    root = _root()
    keep = {"keep_remote": True} if case == "keep_remote" else {}
    source = ssh_source(ssh_host, "tidy", 2, remote_root=root, **keep)
    fixed = {"exit": 3} if case == "a task failed" else {}
    sweep = job_sweep(project, [source], ParameterSpace(grid={"x": [1, 2]}, fixed=fixed))
    sweep.run()
    sweep_root = f"{root}/sweeps/{sweep.id}"
    if case == "success":
        assert sweep.counts() == {"COMPLETED": 2}
        assert not _remote_exists(ssh_host, sweep_root)
        assert _remote_exists(ssh_host, f"{root}/lib")  # shared by sweeps: only the sweep's folder goes
        assert "removed" in source.remote_cleanup
    else:
        assert _remote_exists(ssh_host, f"{sweep_root}/tasks")
        assert "kept" in source.remote_cleanup


def test_cleanup_never_removes_unfinished_work_and_never_raises(project, ssh_host, caplog):
    """Reference style: a job still runs when cleanup() is called (another run may re-adopt it):
    the folder stays.  A folder that cannot be removed is reported, not raised."""
    root = _root()
    source = ssh_source(ssh_host, "busy", 1, remote_root=root, python_path="python", script_path="job.py",
                        project_dir=str(project))
    sweep_dir = project / "runs" / "busy"
    run_sync(source.setup(sweep_dir, "busy"))
    job = run_sync(source.submit_job({"x": 1, "sleep": 30}, "job_1", "busy"))
    until(lambda: run_sync(source.get_job_status(job)) == JobState.RUNNING, 30, "job running")
    run_sync(source.cleanup())
    sweep_root = f"{root}/sweeps/busy"
    assert _remote_exists(ssh_host, f"{sweep_root}/tasks/job_1") and "kept" in source.remote_cleanup
    _remote(ssh_host, f"kill -KILL -- -$(cat {sweep_root}/tasks/job_1/pid)")  # its process group (setsid)

    # every job succeeded and came home, but the folder holds something the user cannot delete
    again = ssh_source(ssh_host, "busy", 1, remote_root=root, python_path="python", script_path="job.py",
                       project_dir=str(project))
    run_sync(again.setup(sweep_dir, "busy2"))
    job = run_sync(again.submit_job({"x": 2}, "job_2", "busy2"))
    until(lambda: run_sync(again.get_job_status(job)) == JobState.COMPLETED, 30, "job done")
    run_sync(again.collect_results([job]))
    locked = ssh_host.home / root[2:] / "sweeps" / "busy2" / "root-owned"
    locked.mkdir()
    (locked / "f").write_text("x")  # made by root: the remote user cannot remove it
    try:
        with caplog.at_level(logging.WARNING):
            run_sync(again.cleanup())  # must not raise
        assert "could not remove" in source_text(again, caplog)
    finally:
        (locked / "f").unlink()
        locked.rmdir()


def source_text(source, caplog) -> str:
    return source.remote_cleanup + " " + caplog.text


@pytest.mark.parametrize("bad", ["/etc/*", "../x", "", ["ok", 3], {"*.log": 1}])
def test_collect_patterns_are_checked_when_the_source_is_made(bad):
    with pytest.raises(ConfigError, match="collect"):
        SSHComputeSource("h", collect=bad)


def test_collect_patterns_are_anchored_at_the_job_folder():
    """Issue 19 item 9 changed this rule: a pattern is anchored at the job's folder (``**`` for any
    depth); tests/test_ssh_edges_unit.py holds the whole table."""
    from hsm_notebook.sources.ssh_jobs import wanted

    assert wanted("j", "ckpt.bin", None)
    assert wanted("j", "exit_code", ["*.log"]) and wanted("j", "metrics.json", [])
    assert not wanted("j", "sub/train.log", ["*.log"]) and wanted("j", "sub/train.log", ["**/*.log"])
    assert not wanted("j", "ckpt.bin", ["*.log"])
    assert wanted("j", "eval/acc.json", ["eval/*.json"]) and not wanted("j", "acc.json", ["eval/*.json"])
