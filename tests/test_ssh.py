"""SSHComputeSource against real OpenSSH servers on loopback: sweeps, bad input, faults.

Fault tests use ``ssh_host_fresh`` (a new user and sshd for one test) so a hung or
stopped server never leaks into another test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import asyncssh
import pytest

from hsm_notebook import ConnectError, LocalComputeSource, ParameterSpace, SourceError, Sweep
from hsm_notebook.core._loop import run_sync
from tests.contract.conftest import ssh_source
from tests.helpers import job_sweep
from tests.helpers import until as _until
from tests.servers.sshd import _keygen, empty_known_hosts, other_host_key_known_hosts, small_tmpfs


def _remote(h, command: str) -> str:
    async def go():
        async with asyncssh.connect(**h.connect_kwargs()) as conn:
            return (await conn.run(command)).stdout
    return run_sync(go())


def test_one_sweep_on_two_hosts_and_this_machine(workdir, ssh_host, ssh_host2):
    sources = [ssh_source(ssh_host, "gpu1", 3), ssh_source(ssh_host2, "gpu2", 3),
               LocalComputeSource(max_parallel_jobs=2)]
    space = ParameterSpace(grid={"x": list(range(24))}, fixed={"sleep": 0.2})
    sweep = job_sweep(workdir, sources, space).run()
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all()
    assert set(status["source"]) == {"gpu1", "gpu2", "local"}
    results = sweep.results()
    assert sorted(results["score"]) == [2.0 * x for x in range(24)]
    # the jobs really ran as the remote users, in their home directories
    remote = status[status["source"] == "gpu1"]["job_name"].iloc[0]
    assert (sweep.directory / "tasks" / remote / "stdout.log").exists()


def test_jobs_run_in_the_synced_project_on_the_remote(workdir, ssh_host):
    (workdir / "data.txt").write_text("remote data")
    (workdir / "job.py").write_text(
        "import os\nfrom hsm_notebook.metrics import log_metrics\n"
        "log_metrics(data=open('data.txt').read(), cwd=os.getcwd(), user=os.environ.get('USER', ''))\n")
    (workdir / "sweeps").mkdir(exist_ok=True)
    (workdir / "sweeps" / "huge.bin").write_bytes(b"0" * 1000)  # excluded by default
    source = ssh_source(ssh_host, "h", 2)
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]})).run()
    row = sweep.results().iloc[0]
    assert row["data"] == "remote data" and row["cwd"].startswith(f"/home/{ssh_host.user}/.hsm_notebook/projects/")
    listing = _remote(ssh_host, f"ls {row['cwd']}")
    assert "data.txt" in listing and "sweeps" not in listing
    assert source.facts["sync"]["method"] == "sftp"  # a small project: no rsync start-up


def test_a_large_project_goes_through_rsync(workdir, ssh_host):
    for i in range(250):
        (workdir / f"m{i}.txt").write_text(str(i))
    source = ssh_source(ssh_host, "r", 1)
    assert job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]})).run().counts() == {"COMPLETED": 1}
    assert source.facts["sync"] == {"method": "rsync", "files": 251, "sent": 251}
    again = ssh_source(ssh_host, "r", 1)
    (workdir / "m7.txt").write_text("changed")
    job_sweep(workdir, [again], ParameterSpace(grid={"x": [2]})).run()
    assert again.facts["sync"]["sent"] == 1


def test_sftp_sync_sends_only_changed_files(workdir, ssh_host):
    source = ssh_source(ssh_host, "s", 1, use_rsync=False)
    for i in range(20):
        (workdir / f"f{i}.txt").write_text(str(i))
    job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]})).run()
    assert source.facts["sync"] == {"method": "sftp", "files": 21, "sent": 21}  # job.py + 20
    (workdir / "f3.txt").write_text("changed!")
    again = ssh_source(ssh_host, "s", 1, use_rsync=False)
    job_sweep(workdir, [again], ParameterSpace(grid={"x": [2]})).run()
    assert again.facts["sync"]["sent"] == 1


@pytest.mark.parametrize("case", ["unknown key", "changed key", "wrong key", "refused", "unresolvable"])
def test_connection_problems_say_what_to_do(workdir, ssh_host, tmp_path, case):
    kwargs = dict(host=ssh_host.host, port=ssh_host.port, username=ssh_host.user,
                  client_keys=[str(ssh_host.client_key)], known_hosts=str(ssh_host.known_hosts))
    words = {"unknown key": "ssh-keyscan", "changed key": "has CHANGED",
             "wrong key": "authentication failed", "refused": "connection refused",
             "unresolvable": "cannot resolve host name"}[case]
    if case == "unknown key":
        kwargs["known_hosts"] = str(empty_known_hosts())
    elif case == "changed key":
        kwargs["known_hosts"] = str(other_host_key_known_hosts(ssh_host))
    elif case == "wrong key":
        _keygen(tmp_path / "stranger", "not authorized")
        kwargs["client_keys"] = [str(tmp_path / "stranger")]
    elif case == "refused":
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            kwargs["port"] = s.getsockname()[1]  # closed again before we connect
    else:
        kwargs["host"] = "no such host"  # rejected by the local resolver: no DNS query leaves the machine
    source = SSHComputeSourceFor(**kwargs)
    sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]}))
    with pytest.raises(ConnectError) as err:
        sweep.run()
    assert words in str(err.value)
    assert sweep.counts() == {"PENDING": 1}  # nothing started, nothing lost


def SSHComputeSourceFor(**kwargs):
    from hsm_notebook import SSHComputeSource
    host = kwargs.pop("host")
    return SSHComputeSource(host, "h", 1, **kwargs)


def test_trust_new_host_records_a_new_key_but_never_a_changed_one(workdir, ssh_host, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    source = SSHComputeSourceFor(host=ssh_host.host, port=ssh_host.port, username=ssh_host.user,
                                 client_keys=[str(ssh_host.client_key)], known_hosts=str(kh), trust_new_host=True)
    assert job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]})).run().counts() == {"COMPLETED": 1}
    assert ssh_host.host_key_pub.split()[1] in kh.read_text()
    changed = other_host_key_known_hosts(ssh_host)
    before = changed.read_text()
    source = SSHComputeSourceFor(host=ssh_host.host, port=ssh_host.port, username=ssh_host.user,
                                 client_keys=[str(ssh_host.client_key)], known_hosts=str(changed), trust_new_host=True)
    with pytest.raises(ConnectError, match="has CHANGED"):
        job_sweep(workdir, [source], ParameterSpace(grid={"x": [2]})).run()
    assert changed.read_text() == before


def test_remote_program_not_found(workdir, ssh_host):
    sweep = Sweep(ParameterSpace(grid={"x": [1]}), ["definitely-not-installed-xyz", "--go"],
                  [ssh_source(ssh_host, "h", 1)], workdir=workdir)
    with pytest.raises(SourceError, match="program 'definitely-not-installed-xyz' not found on"):
        sweep.run()


def test_remote_disk_full(workdir, ssh_host_fresh):
    h = ssh_host_fresh
    import tempfile
    disk = Path(tempfile.mkdtemp(prefix="hsm-disk-"))  # reachable by the remote user, unlike tmp_path
    disk.chmod(0o755)
    with small_tmpfs(disk, "1m"):
        source = ssh_source(h, "full", 1, remote_root=str(disk / "root"))
        with pytest.raises(SourceError, match=r"only [01] MB free under .*min_free_mb=100"):
            job_sweep(workdir, [source], ParameterSpace(grid={"x": [1]})).run()
        (workdir / "job.py").write_text("open('big', 'wb').write(b'0' * 4_000_000)\n")
        source = ssh_source(h, "full", 1, remote_root=str(disk / "root"), min_free_mb=0)
        sweep = job_sweep(workdir, [source], ParameterSpace(grid={"x": [2]})).run()
        row = sweep.status().iloc[0]
        # the wrapper cannot even write the exit code on a full disk: LOST, with the reason; the
        # retries (LOST is retried) cannot start at all on the full disk and end quickly the same way
        assert row["state"] == "LOST" and "the remote disk is full" in row["error"] and row["attempt"] == 3
    disk.rmdir()


def _running(sweep, n):
    return sweep.counts().get("RUNNING", 0) >= n


@pytest.mark.parametrize("fault", ["drop connection", "hang and resume", "restart sshd"])
def test_faults_while_jobs_run_lose_nothing_and_run_nothing_twice(workdir, ssh_server, ssh_host_fresh, fault):
    h = ssh_host_fresh
    source = ssh_source(h, "flaky", 4, give_up_after=60)
    shared = f"/home/{h.user}/runs.txt"
    space = ParameterSpace(grid={"x": list(range(8))}, fixed={"sleep": 1.5, "append": shared})
    sweep = job_sweep(workdir, [source], space).start()
    _until(lambda: _running(sweep, 4), what="4 running jobs")
    if fault == "drop connection":
        ssh_server.kill_connections(h)
    elif fault == "hang and resume":
        ssh_server.hang(h)
        # resumed once the source has noticed (keepalive: ~6 s), so it must reconnect and re-adopt
        _until(lambda: not source.conn.alive, 60, "the hung connection noticed by keepalive")
        ssh_server.resume(h)
    else:
        ssh_server.stop_listener(h)
        ssh_server.kill_connections(h)
        # restarted once the source has found its connection gone and been refused a new one
        _until(lambda: not source.conn.alive, 60, "the dropped connection noticed")
        _until(lambda: "refused" in str(sweep.sources_status().set_index("source").loc["flaky", "problems"]), 60,
               "a reconnect refused while sshd is down")
        ssh_server.restart_listener(h)
    sweep.wait(timeout=120)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all(), status[["state", "error"]]
    assert (status["attempt"] == 1).all()
    runs = _remote(h, f"cat {shared}").split()
    assert sorted(runs) == sorted(status["task_id"]), "a job ran twice or not at all"


def test_a_job_killed_on_the_remote_is_lost_or_failed_with_its_signal(workdir, ssh_host_fresh):
    h = ssh_host_fresh
    space = ParameterSpace(combinations=[{"x": 1, "sleep": 60}, {"x": 2, "sleep": 60}])
    sweep = job_sweep(workdir, [ssh_source(h, "k", 2)], space, retry={"max_attempts": 1}).start()
    _until(lambda: _running(sweep, 2), what="2 running jobs")
    jobs = sweep.status().set_index("x")["job_name"]
    tasks = f"/home/{h.user}/.hsm_notebook/sweeps/{sweep.id}/tasks"
    # x=1: the whole process group (wrapper included) dies; x=2: only the job's process
    _remote(h, f"kill -KILL -$(cat {tasks}/{jobs[1]}/pid); pkill -KILL -P $(cat {tasks}/{jobs[2]}/pid)")
    sweep.wait(timeout=60)
    status = sweep.status().set_index("x")
    assert status.loc[1, "state"] == "LOST" and "vanished without an exit code" in status.loc[1, "error"]
    assert status.loc[2, "state"] == "FAILED" and status.loc[2, "exit_code"] == 137


def test_a_host_that_stays_down_is_given_up_and_its_jobs_are_lost(workdir, ssh_server, ssh_host_fresh):
    h = ssh_host_fresh
    sweep = job_sweep(workdir, [ssh_source(h, "gone", 2, give_up_after=3)],
                      ParameterSpace(grid={"x": [1, 2]}, fixed={"sleep": 60}), retry={"max_attempts": 1}).start()
    _until(lambda: _running(sweep, 2), what="2 running jobs")
    ssh_server.stop_listener(h)
    ssh_server.kill_connections(h)
    sweep.wait(timeout=60)
    assert sweep.counts() == {"LOST": 2}
    ssh_server.kill_user_processes(h)


CONTROLLER = textwrap.dedent(
    """
    import sys
    from hsm_notebook import ParameterSpace, SSHComputeSource, Sweep
    workdir, directory, host, port, user, key, kh, shared = sys.argv[1:9]
    source = SSHComputeSource(host, "remote", 3, port=int(port), username=user, client_keys=[key], known_hosts=kh)
    space = ParameterSpace(grid={"x": list(range(12))}, fixed={"sleep": 0.5, "append": shared})
    sweep = Sweep(space, ["python", "job.py"], [source], workdir=workdir, directory=directory, poll_interval=0.2)
    print("started", flush=True)
    sweep.run()
    """
)


def test_controller_killed_then_attach_readopts_remote_jobs(workdir, ssh_host_fresh):
    h = ssh_host_fresh
    shared = f"/home/{h.user}/runs.txt"
    directory = workdir / "sweeps" / "remote-crash"
    (workdir / "controller.py").write_text(CONTROLLER)
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(directory), h.host, str(h.port),
                             h.user, str(h.client_key), str(h.known_hosts), shared],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        _until(lambda: len(_remote(h, f"cat {shared} 2>/dev/null").split()) >= 4, what="4 runs")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    sweep = Sweep.attach(directory)  # rebuilt from the record: host, port, user, key, known_hosts
    sweep.wait(timeout=120)
    status = sweep.status()
    assert (status["state"] == "COMPLETED").all()
    runs = _remote(h, f"cat {shared}").split()
    assert sorted(runs) == sorted(status["task_id"])


def test_the_panel_adds_an_ssh_host_and_launches_on_it(workdir, ssh_host, tmp_path):
    from hsm_notebook.ui import SweepPanel
    from hsm_notebook.ui.sources_view import ssh_config_hosts

    config = tmp_path / "config"
    config.write_text("Host gpu1 gpu2\n  HostName 127.0.0.2\nHost *.cluster\n  User x\n")
    assert ssh_config_hosts(config) == ["gpu1", "gpu2"]
    panel = SweepPanel(sources=[], refresh_interval=0.1, directory=tmp_path / "s")
    try:
        panel.sources_view.kind.value = "SSH host"
        form = panel.sources_view.form
        form.port.value = "not a port"
        panel.sources_view.add_button.click()
        assert "host: give a host name" in panel.message.value
        form.host.value, form.port.value = ssh_host.host, str(ssh_host.port)
        form.user.value, form.key.value = ssh_host.user, str(ssh_host.client_key)
        form.known_hosts.value, form.slots.value, form.name.value = str(ssh_host.known_hosts), 2, "box"
        panel.sources_view.add_button.click()
        assert [s.name for s in panel.sources_view.sources] == ["box"]
        panel.check_health()
        _until(lambda: "box" in panel.sources_view.health, 30, "the health of box shown")
        assert panel.sources_view.health["box"]["status"] == "healthy"
        panel.editor.command.value = "python job.py"
        panel.editor.workdir.value = str(workdir)
        panel.editor.rows[0][0].value, panel.editor.rows[0][1].value = "x", "1, 2, 3"
        panel.launch_button.click()
        panel.sweep.wait(timeout=60)
        assert panel.sweep.counts() == {"COMPLETED": 3}
        assert set(panel.sweep.status()["source"]) == {"box"}
    finally:
        panel.close()
