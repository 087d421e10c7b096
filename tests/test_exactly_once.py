"""Exactly once under slow starts, and GPU pins across ``attach``.

A job is LOST only when it provably never started or provably died without an exit code,
never after a wall-clock wait: a start slowed by seconds (a slow ``/bin/sh`` locally, a slow
``setsid`` on the SSH host) must neither be declared LOST nor run twice, whether the
controller waits or is killed and another attaches.  And a controller that attaches to
running jobs keeps their GPUs pinned, so no two running jobs share one.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncssh
import pytest

from hsm_notebook import ParameterSpace, Sweep
from hsm_notebook.core._loop import run_sync
from hsm_notebook.core.spec.job import WRAPPER
from tests.helpers import until as _until

#: A ``/bin/sh`` that takes 3 s to start: the launcher of a job, still starting.
SLOW_SH = "#!/bin/sh\nsleep 3\nexec /bin/sh \"$@\"\n"

#: Runs in a subprocess: a controller whose job launches go through SLOW_SH (at the Popen
#: seam, so any version of the package is slowed the same way).  It SIGKILLs itself right
#: after its third launch: that attempt is still SUBMITTING in the ledger, and its job,
#: like the others, has not started yet.
LOCAL_CONTROLLER = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    workdir, shared, directory, slow = sys.argv[1:5]
    launches = []
    Popen = subprocess.Popen

    class SlowPopen(Popen):
        def __init__(self, args, *a, **kw):
            if isinstance(args, list) and args[:1] == ["/bin/sh"] and "hsm-job" in args:
                args = [slow, *args[1:]]
            super().__init__(args, *a, **kw)
            if slow in self.args:
                launches.append(self.pid)
                if len(launches) == 3:
                    os.kill(os.getpid(), signal.SIGKILL)

    subprocess.Popen = SlowPopen
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
    space = ParameterSpace(grid={"x": list(range(6))}, fixed={"append": shared, "sleep": 0.3})
    sweep = Sweep(space, ["python", "job.py"], [LocalComputeSource(max_parallel_jobs=3)],
                  workdir=workdir, directory=directory, poll_interval=0.2)
    sweep.run()
    """
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _attempts(directory: Path) -> list[tuple]:
    with sqlite3.connect(directory / "ledger.sqlite") as db:
        return db.execute("SELECT task_id, attempt, state, error FROM attempts ORDER BY task_id, attempt").fetchall()


def test_local_slow_starts_across_a_controller_crash_run_every_task_exactly_once(workdir):
    shared, directory = workdir / "runs.txt", workdir / "sweeps" / "slow-local"
    slow = workdir / "slow-sh"
    slow.write_text(SLOW_SH)
    slow.chmod(0o755)
    (workdir / "controller.py").write_text(LOCAL_CONTROLLER)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "controller.py", str(workdir), str(shared), str(directory), str(slow)],
                         cwd=workdir, capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert _lines(shared) == [], "a job started before the crash: nothing was tested"
    states = {row[2] for row in _attempts(directory)}
    assert "SUBMITTING" in states, states  # recover_job meets a job still starting
    sweep = Sweep.attach(directory)
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 6}
    _until(lambda: not any(pid_of_slow(slow)), timeout=30, what="the slow launchers to end")
    runs = _lines(shared)
    assert sorted(runs) == sorted(set(runs)) and len(runs) == 6, f"{len(runs)} runs for {len(set(runs))} tasks"
    attempts = _attempts(directory)
    assert [(a, s) for _, a, s, _ in attempts] == [(1, "COMPLETED")] * 6, attempts
    print(f"local slow start: {time.monotonic() - t0:.1f} s")


def pid_of_slow(slow: Path) -> list[int]:
    """Live processes running the slow shell script (by argv item)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(slow).encode() in argv:
                found.append(int(name))
    return found


def test_the_wrapper_runs_nothing_for_a_job_it_cannot_claim(tmp_path):
    cases = [  # (SLURM_RESTART_COUNT, pid file found by the wrapper, whether the task runs)
        ("0", "never", False),  # claimed by the controller: the wrapper runs nothing, exits 0
        ("0", "123", False),    # a second start of the same folder never runs the task twice
        ("1", "never", False),  # a Slurm requeue of a claimed job: still nothing
        ("1", "123", True),     # a Slurm requeue of a job that ran: it runs again, as Slurm means
    ]
    for i, (restart_count, pid, runs) in enumerate(cases):
        job, ran = tmp_path / f"abc-{i}", tmp_path / f"ran-{i}"
        job.mkdir()
        (job / "pid").write_text(pid + "\n")
        env = {**os.environ, "SLURM_RESTART_COUNT": restart_count}
        done = subprocess.run(["/bin/sh", "-c", WRAPPER, "hsm-job", str(job), "touch", str(ran)],
                              env=env, capture_output=True, text=True, timeout=10)
        assert (done.returncode, done.stderr) == (0, ""), cases[i]
        assert (ran.exists(), (job / "exit_code").exists()) == (runs, runs), cases[i]
        assert ((job / "pid").read_text().strip() == pid) == (not runs), cases[i]


# -------------------------------------------------------------------------------- SSH

#: A ``setsid`` first on the remote user's PATH: slow (SLOW_FOR seconds) while ~/slow exists.
SLOW_SETSID = "#!/bin/sh\nif [ -e \"$HOME/slow\" ]; then sleep {secs}; fi\nexec /usr/bin/setsid \"$@\"\n"

SSH_CONTROLLER = textwrap.dedent(
    """
    import sys
    from hsm_notebook import ParameterSpace, SSHComputeSource, Sweep
    workdir, directory, host, port, user, key, kh, shared = sys.argv[1:9]
    source = SSHComputeSource(host, "remote", 2, port=int(port), username=user, client_keys=[key], known_hosts=kh,
                              keepalive_interval=1.0)
    space = ParameterSpace(grid={"x": [1, 2]}, fixed={"append": shared})
    sweep = Sweep(space, ["python", "job.py"], [source], workdir=workdir, directory=directory, poll_interval=0.5)
    print("started", flush=True)
    sweep.run()
    """
)


def _remote(h, command: str) -> str:
    async def go():
        async with asyncssh.connect(**h.connect_kwargs()) as conn:
            return (await conn.run(command)).stdout
    return run_sync(go())


def _slow_setsid(h, secs: int) -> None:
    """Put the slow setsid first on the non-interactive PATH (bash reads ~/.bashrc over SSH)."""
    _remote(h, f"mkdir -p ~/shim && printf '%s' {_q(SLOW_SETSID.format(secs=secs))} > ~/shim/setsid && "
               f"chmod 755 ~/shim/setsid && touch ~/slow && "
               f"{{ echo 'PATH=$HOME/shim:$PATH; export PATH'; cat ~/.bashrc; }} > ~/.rc && mv ~/.rc ~/.bashrc")
    assert _remote(h, "command -v setsid").strip().endswith("/shim/setsid")


def _q(text: str) -> str:
    import shlex
    return shlex.quote(text)


def _user_procs(h, word: str) -> list[int]:
    """Live processes of the test user whose argv has ``word`` (the shims, seen from here)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            status = Path(f"/proc/{name}/status").read_text()
            argv = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        uid = next((line.split()[1] for line in status.splitlines() if line.startswith("Uid:")), None)
        if uid == str(h.uid) and word.encode() in argv:
            found.append(int(name))
    return found


def test_ssh_a_start_slower_than_a_minute_across_a_controller_crash_runs_once(workdir, ssh_host_fresh):
    h = ssh_host_fresh
    _slow_setsid(h, 68)  # longer than the old 60 s "not started yet" timer
    shared = f"/home/{h.user}/runs.txt"
    directory = workdir / "sweeps" / "slow-remote"
    (workdir / "controller.py").write_text(SSH_CONTROLLER)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "controller.py", str(workdir), str(directory), h.host, str(h.port),
                             h.user, str(h.client_key), str(h.known_hosts), shared],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        _until(lambda: len(_user_procs(h, "shim/setsid")) == 2, what="2 slow launchers")
        _until(lambda: {r[2] for r in _attempts(directory)} == {"QUEUED"}, what="2 submitted jobs")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    _remote(h, "rm ~/slow")  # a retry, if any, starts at once (and would run the task a second time)
    sweep = Sweep.attach(directory)
    sweep.wait(timeout=150)
    _until(lambda: not _user_procs(h, "shim/setsid"), timeout=90, what="the slow launchers to end")
    runs = _remote(h, f"cat {shared} 2>/dev/null").split()
    status = sweep.status()
    assert sorted(runs) == sorted(status["task_id"]), f"runs {runs} for tasks {list(status['task_id'])}"
    assert (status["state"] == "COMPLETED").all() and (status["attempt"] == 1).all(), status[["state", "error"]]
    print(f"ssh slow start: {time.monotonic() - t0:.1f} s")


def test_ssh_a_launcher_that_dies_before_its_job_starts_is_lost_at_once_and_runs_once(workdir, ssh_host_fresh):
    from tests.contract.conftest import ssh_source

    h = ssh_host_fresh
    _slow_setsid(h, 300)
    shared = f"/home/{h.user}/runs.txt"
    space = ParameterSpace(grid={"x": [1]}, fixed={"append": shared})
    t0 = time.monotonic()
    sweep = Sweep(space, ["python", "job.py"], [ssh_source(h, "dies", 1)], workdir=workdir, poll_interval=0.3,
                  retry={"backoff": 0}).start()
    _until(lambda: len(_user_procs(h, "shim/setsid")) == 1, what="the slow launcher")
    _remote(h, "rm ~/slow")
    for pid in _user_procs(h, "shim/setsid"):  # the launcher dies before its job started
        os.kill(pid, signal.SIGKILL)
    sweep.wait(timeout=30)  # no 60 s wait: the gone launcher proves the job never started
    attempts = _attempts(sweep.directory)
    assert [(a, s) for _, a, s, _ in attempts] == [(1, "LOST"), (2, "COMPLETED")], attempts
    assert "never started" in attempts[0][3]
    assert _remote(h, f"cat {shared}").split() == list(sweep.status()["task_id"])
    print(f"ssh launcher died: {time.monotonic() - t0:.1f} s")


# -------------------------------------------------------------------------------- GPUs

#: Records its GPU and run time.  The first controller's two jobs wait for its crash (the test
#: writes ``<log>.crashed``); then the one on GPU 1 ends and the one on GPU 0 runs on until a third
#: job has started: the attached controller starts that one while GPU 0 is still held, so a
#: controller that forgot the pins hands out GPU 0 again.  Waits are on those facts, bounded.
GPU_JOB = textwrap.dedent(
    """
    import json, os, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    gpu, start = os.environ.get("CUDA_VISIBLE_DEVICES", ""), time.time()
    with open(args["log"] + ".started", "a+") as f:
        f.seek(0)
        first = len(f.read().split()) < 2  # one of the first controller's two jobs
        f.write(gpu + "\\n")

    def wait_for(cond):
        deadline = time.time() + 90
        while not cond() and time.time() < deadline:
            time.sleep(0.05)

    if first:
        wait_for(lambda: os.path.exists(args["log"] + ".crashed"))
    if first and gpu == "0":
        wait_for(lambda: len(open(args["log"] + ".started").read().split()) >= 3)
    with open(args["log"], "a") as f:
        f.write(json.dumps({"x": int(args["x"]), "gpu": gpu, "start": start, "end": time.time()}) + "\\n")
    """
)

GPU_CONTROLLER = textwrap.dedent(
    """
    import sys
    from hsm_notebook import LocalComputeSource, ParameterSpace, SSHComputeSource, Sweep
    kind, workdir, directory, log = sys.argv[1:5]
    if kind == "local":
        source = LocalComputeSource(max_parallel_jobs=2, gpus=[0, 1])
    else:
        host, port, user, key, kh = sys.argv[5:10]
        source = SSHComputeSource(host, "remote", 2, port=int(port), username=user, client_keys=[key],
                                  known_hosts=kh, gpus=[0, 1])
    space = ParameterSpace(grid={"x": list(range(5))}, fixed={"log": log})
    sweep = Sweep(space, ["python", "gpu_job.py"], [source], workdir=workdir, directory=directory, poll_interval=0.2)
    print("started", flush=True)
    sweep.run()
    """
)


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_gpu_pins_survive_attach_no_two_running_jobs_share_a_gpu(workdir, kind, request):
    (workdir / "gpu_job.py").write_text(GPU_JOB)
    (workdir / "controller.py").write_text(GPU_CONTROLLER)
    directory = workdir / "sweeps" / f"gpus-{kind}"
    if kind == "local":
        log, extra = str(workdir / "gpus.log"), []
        read = lambda name: Path(name).read_text() if Path(name).exists() else ""  # noqa: E731
        touch = lambda name: Path(name).touch()  # noqa: E731
    else:
        h = request.getfixturevalue("ssh_host_fresh")
        log, extra = f"/home/{h.user}/gpus.log", [h.host, str(h.port), h.user, str(h.client_key), str(h.known_hosts)]
        read = lambda name: _remote(h, f"cat {name} 2>/dev/null")  # noqa: E731
        touch = lambda name: _remote(h, f"touch {name}")  # noqa: E731
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "controller.py", kind, str(workdir), str(directory), log, *extra],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        _until(lambda: sorted(read(log + ".started").split()) == ["0", "1"], what="2 jobs on GPUs 0 and 1")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        touch(log + ".crashed")  # the first two jobs go on now (the one on GPU 1 ends)
    sweep = Sweep.attach(directory)
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 5}
    runs = [json.loads(line) for line in read(log).splitlines()]
    assert sorted(r["x"] for r in runs) == list(range(5))
    for gpu in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in runs if r["gpu"] == gpu)
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two running jobs shared GPU {gpu}: {runs}"
    print(f"gpu pins {kind}: {time.monotonic() - t0:.1f} s")
