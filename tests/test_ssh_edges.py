"""Issue 19, items 8-11, against real loopback sshd: what comes back from an SSH host whatever
``collect=`` says, the one anchored glob grammar of ``collect=``, a hung remote command named as a
timeout (with the environment line), and an sshd that is down while slots are refilled.
"""

from __future__ import annotations

import secrets
import textwrap

import pytest

from hsm_notebook import ParameterSpace, RetryPolicy, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.model.errors import SourceError
from hsm_notebook.sources.ssh_connection import SSHConnection
from tests.contract.conftest import ssh_source
from tests.helpers import until
from tests.test_ssh_collect import _remote

pytestmark = pytest.mark.ssh

JOB = textwrap.dedent(
    '''
    import json, os, sys
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    d = os.environ["HSM_TASK_DIR"]
    from hsm_notebook.metrics import log_metrics
    for i in range(int(args.get("steps", 0))):  # fast: most steps land after the last poll
        log_metrics(step=i, loss=1.0 / (i + 1))
    if args.get("files"):
        for rel in ["eval/a.json", "eval/deep/x.json", "other/eval/c.json", "eval/new\\nline.json", "top.json",
                    "eval/secret.json"]:
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                json.dump({"rel": rel}, f)
        os.chmod(os.path.join(d, "eval/secret.json"), 0)  # unreadable: it cannot come back
    log_metrics(y=int(args.get("x", 0)) * 2)
    '''
)


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def _root() -> str:
    return f"~/.hsm_edges_{secrets.token_hex(3)}"


# -- item 8: the product's own files always come back ----------------------------------------------
def test_steps_come_back_whatever_collect_says(project, ssh_host):
    """``collect=["*.log"]``: every step of ``metrics.jsonl`` is in ``metrics()``, also those logged
    after the last poll (the job logs 50 steps and ends at once)."""
    source = ssh_source(ssh_host, "picky-steps", 2, remote_root=_root(), collect=["*.log"])
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}, fixed={"steps": 50}), ["python", "job.py"], [source],
                  workdir=project, poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 3}, sweep.status()[["state", "error"]]
    for name in sweep.status()["job_name"]:
        assert (sweep.directory / "tasks" / name / "metrics.jsonl").exists()
    frame = sweep.metrics()
    counts = frame.groupby("task_id")["step"].nunique()
    assert len(counts) == 3 and (counts == 50).all(), counts


def test_a_function_result_comes_back_whatever_collect_says(project, ssh_host):
    def work(x):
        return {"y": x * 3, "blob": list(range(x))}

    source = ssh_source(ssh_host, "picky-fn", 2, remote_root=_root(), collect=["*.log"])
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), work, [source], workdir=project, poll_interval=0.2).run()
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    for tid, x in sweep.status().set_index("task_id")["x"].items():
        assert sweep.result(tid) == {"y": x * 3, "blob": list(range(x))}


# -- item 9: one anchored glob grammar; a file that cannot come back is named ---------------------------
@pytest.mark.parametrize("via", ["tar", "sftp"])
def test_collect_patterns_are_anchored_and_what_stays_behind_is_named(project, ssh_host, via, monkeypatch):
    if via == "sftp":  # as on a host without tar
        from hsm_notebook.sources.ssh_jobs import RemoteJobManager

        real_fetch = RemoteJobManager.fetch

        async def sftp_fetch(self, *args, **kwargs):
            self.tar = False
            return await real_fetch(self, *args, **kwargs)

        monkeypatch.setattr(RemoteJobManager, "fetch", sftp_fetch)
    source = ssh_source(ssh_host, f"globs-{via}", 2, remote_root=_root(), collect=["eval/*.json"])
    sweep = Sweep(ParameterSpace(grid={"x": [1]}, fixed={"files": 1}), ["python", "job.py"], [source],
                  workdir=project, poll_interval=0.2).run()
    status = sweep.status()
    assert list(status["state"]) == ["COMPLETED"], status[["state", "error"]]
    local = sweep.directory / "tasks" / status["job_name"].iloc[0]
    files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert {"eval/a.json", "eval/new\nline.json"} <= files, files
    assert not files & {"eval/deep/x.json", "other/eval/c.json", "top.json"}, files
    error = status["error"].iloc[0] or ""
    assert "did not come back" in error and "eval/secret.json" in error, error
    assert sweep.results()["y"].tolist() == [2]


# -- item 10: a hung remote command is a timeout, named with the environment line -----------------------
def test_a_hung_pre_script_line_is_a_timeout_naming_the_line(project, ssh_server, ssh_host_fresh, monkeypatch):
    h = ssh_host_fresh
    fifo = f"/home/{h.user}/answer.fifo"
    _remote(h, f"mkfifo {fifo}")
    real_run = SSHConnection.run

    async def short_probe(self, script, *, check=True, timeout=60.0):  # the setup probe's 120 s, shortened
        if "hsm-probe" in script:
            timeout = 3.0
        return await real_run(self, script, check=check, timeout=timeout)

    monkeypatch.setattr(SSHConnection, "run", short_probe)
    line = f"read answer < {fifo}"
    source = ssh_source(h, "hung", 1, remote_root=_root(), environment={"pre_script": [line]},
                        python_path="python", script_path="job.py", project_dir=str(project))
    try:
        with pytest.raises(SourceError) as info:
            run_sync(source.setup(project / "runs" / "hung", "hung"))
    finally:
        run_sync(source.cleanup())
    message = str(info.value)
    assert "lost" not in message, message
    assert "no answer" in message or "timed out" in message, message
    assert line in message, message

    def env_scripts_running() -> list[int]:
        found = []
        for pid in ssh_server.user_pids(h):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"/env-" in f.read():
                        found.append(pid)
            except OSError:
                pass
        return found

    until(lambda: not env_scripts_running(), 10, "the hung setup check ended by the source")


# -- item 11: a host that cannot be reached spends no task's attempts ----------------------------------
def test_sshd_down_while_slots_are_refilled_spends_no_attempts(ssh_server, ssh_host_fresh, tmp_path):
    """16 tasks, 4 slots; refills are held while the test stops the listening sshd and drops the
    connection, then let go: they meet "connection refused".  sshd comes back 10 s later: every
    task completes in its first attempt, none LOST."""
    import threading
    import time

    from hsm_notebook.core._loop import run_sync  # noqa: F401 - the package's loop runs the sweep

    h = ssh_host_fresh
    (tmp_path / "job.py").write_text("import sys, time\ntime.sleep(0.3)\nprint(sys.argv[1:])\n")
    source = ssh_source(h, "flaky-host", 4, remote_root=_root(), give_up_after=300)
    real_submit = source.submit_job
    hold = threading.Event()
    held, refused = [], []

    async def held_submit(*args, **kwargs):
        import asyncio

        if hold.is_set():
            held.append(args[1])
            while hold.is_set():
                await asyncio.sleep(0.02)
        try:
            return await real_submit(*args, **kwargs)
        except Exception as exc:
            refused.append(str(exc))
            raise

    source.submit_job = held_submit
    sweep = Sweep(ParameterSpace(grid={"x": list(range(16))}), ["python", "job.py"], [source], workdir=tmp_path,
                  poll_interval=0.2, retry=RetryPolicy(max_attempts=3, backoff=0.5)).start()
    try:
        until(lambda: sweep.counts().get("COMPLETED", 0) >= 2, 60, "the first tasks done")
        hold.set()
        until(lambda: len(held) >= 2, 60, "two refills held")
        ssh_server.stop_listener(h)
        ssh_server.kill_connections(h)
        down_at = time.monotonic()
        hold.clear()
        until(lambda: len(refused) >= 2, 30, "the held refills refused")
        until(lambda: time.monotonic() - down_at >= 10, 30, "sshd down for 10 s")
        ssh_server.restart_listener(h)
        sweep.wait(timeout=180)
    finally:
        hold.clear()
        if sweep.running:
            sweep.cancel()
            sweep.wait(timeout=60)
    assert any("refused" in r for r in refused), refused
    status = sweep.status()
    assert sweep.counts() == {"COMPLETED": 16}, status[["state", "attempt", "error"]]
    assert (status["attempt"] == 1).all(), status[["attempt", "error"]]
