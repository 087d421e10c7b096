"""Function sweeps: a pickled Python callable per task vs a raw loop, and vs a command task over SSH.

    python bench/functions.py [--tasks 1000] [--slots 8] [--rounds 3] [--ssh-tasks 60] [--ssh-slots 4] [--no-ssh]

1. Local.  ``Sweep(space, work, [LocalComputeSource(max_parallel_jobs=8)], poll_interval=0.05)``
   with ``work(x) -> {"y": x}`` over ``--tasks`` values of ``x`` (each task runs
   ``python -m hsm_notebook.runner PARAMS_JSON`` in its own folder: load ``function.pkl``, call,
   write ``result.pkl`` and the dict's numbers as metrics), against a raw loop that keeps
   ``--slots`` ``subprocess.Popen([sys.executable, "-c", LOAD_CALL_PICKLE, pkl, params, out])``
   running (one folder per task, the same cloudpickle bytes of ``work`` in one ``function.pkl``,
   exits reaped through pidfds, so no polling).  The sweep is timed from ``start()`` to all rows
   in ``results()`` (as bench/local_dispatch.py; ``Sweep()`` itself, pickling and ledger, is
   printed apart); the loop from its first Popen to its last exit.  Target: sweep tasks/s >= 0.8x
   the loop's.
2. SSH.  A loopback sshd (the test suite's tests/servers/sshd.py, 127.0.0.9, clean ~/.bashrc;
   jobs run by /usr/bin/python3, which must share this kernel's major.minor for the pickle) and
   ``--ssh-tasks`` trivial tasks, ``--ssh-slots`` at a time, once as a function sweep (``work``)
   and once as a command sweep (``python job.py``, a job.py that only imports sys and writes
   nothing), each with a fresh SSHComputeSource built like tests/contract/conftest.py
   ``ssh_source``.  Printed: seconds per task over the dispatch window (first submission to last
   end, ``Sweep.time_span()``: set-up excluded) and over start() to results() (set-up, project
   sync and, for functions, the runner + cloudpickle upload included).  Target: function
   window/task within 10% of the command's.

Rounds alternate the two variants (baseline first); medians are printed with their ratio and
whether the target is met (the script never fails on a miss).  Every loop is bounded by a deadline;
processes started here are killed by PID and sweeps cancelled in ``finally``.  Linux only
(``os.pidfd_open``); the SSH part needs root and openssh-server, like the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cloudpickle  # noqa: E402

from hsm_notebook import LocalComputeSource, ParameterSpace, SSHComputeSource, Sweep  # noqa: E402
from hsm_notebook.core.spec import functions  # noqa: E402

PY = "/usr/bin/python3"  # the interpreter on the loopback "remote" (the sshd user cannot read /root/.pyenv)
SSH_HOST = "127.0.0.9"  # clear of the tests' 127.0.0.2-5 and bench/ssh_dispatch.py's .6/.7
COMMAND_JOB = "import sys\n"  # the command task: start Python, write nothing

#: What one raw-loop process does: what hsm_notebook.runner does for one task, minus the sweep.
LOAD_CALL_PICKLE = """import json, pickle, sys, cloudpickle
with open(sys.argv[1], "rb") as f:
    fn = cloudpickle.load(f)
value = fn(**json.loads(sys.argv[2]))
with open(sys.argv[3], "wb") as f:
    cloudpickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
"""


def work(x):
    """The trivial function every function task runs (defined in __main__: pickled by value)."""
    return {"y": x}


def _deadline(n: int, slots: int) -> float:
    return time.monotonic() + 60 + 2.0 * n / slots  # ~10x a slow run of this machine


def _finish(sweep: Sweep | None) -> None:
    """Cancel a sweep still running (a failed or timed-out round) and wait for it, bounded."""
    if sweep is not None and sweep.running:
        try:
            sweep.cancel()
            sweep.wait(timeout=30)
        except Exception as exc:  # noqa: BLE001 - cleanup: say so, go on
            print(f"   (cleanup of sweep {sweep.id}: {type(exc).__name__}: {exc})", file=sys.stderr)


# --------------------------------------------------------------------------- local


def raw_loop(root: Path, n: int, slots: int) -> float:
    """``slots`` Popen'd ``python -c`` at a time, each its own params and folder, one function.pkl."""
    root.mkdir()
    pkl = root / functions.FUNCTION_FILE
    pkl.write_bytes(functions.pack(work))
    deadline = _deadline(n, slots)
    sel = selectors.DefaultSelector()
    running: dict[int, subprocess.Popen] = {}  # pidfd -> process
    started = done = 0
    try:
        t0 = time.perf_counter()
        while done < n:
            while started < n and len(running) < slots:
                d = root / str(started)
                d.mkdir()
                proc = subprocess.Popen(
                    [sys.executable, "-c", LOAD_CALL_PICKLE, str(pkl), json.dumps({"x": started}), "result.pkl"],
                    cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                fd = os.pidfd_open(proc.pid)
                running[fd] = proc
                sel.register(fd, selectors.EVENT_READ)
                started += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"raw loop: {done} of {n} done at the deadline")
            for key, _ in sel.select(timeout=left):
                sel.unregister(key.fd)
                os.close(key.fd)
                proc = running.pop(key.fd)
                if proc.wait() != 0:
                    raise RuntimeError(f"raw loop: {proc.args[4]} exited {proc.returncode}")
                done += 1
        elapsed = time.perf_counter() - t0
    finally:
        for fd, proc in running.items():
            proc.kill()
            proc.wait()
            os.close(fd)
        sel.close()
    for i in (0, n - 1):  # the loop did the work
        with open(root / str(i) / "result.pkl", "rb") as f:
            assert cloudpickle.load(f) == {"y": i}
    return elapsed


def sweep_local(root: Path, workdir: Path, n: int, slots: int) -> tuple[float, float]:
    """(start() to results(), Sweep() construction) for a local function sweep."""
    sweep = None
    try:
        t0 = time.perf_counter()
        sweep = Sweep(ParameterSpace(grid={"x": list(range(n))}), work, [LocalComputeSource(max_parallel_jobs=slots)],
                      workdir=workdir, directory=root, poll_interval=0.05)
        t1 = time.perf_counter()
        sweep.start().wait(timeout=max(1.0, _deadline(n, slots) - time.monotonic()))
        results = sweep.results()
        elapsed = time.perf_counter() - t1
        assert len(results) == n and (results["y"] == results["x"]).all(), sweep.status()["error"].dropna().head()
        return elapsed, t1 - t0
    finally:
        _finish(sweep)


def local_part(args, tmp: Path, workdir: Path) -> None:
    t_raw, t_ours, t_build = [], [], []
    for r in range(args.rounds):
        raw_dir, sweep_dir = tmp / f"raw-{r}", tmp / f"sweep-{r}"
        try:
            t_raw.append(raw_loop(raw_dir, args.tasks, args.slots))
            t, b = sweep_local(sweep_dir, workdir, args.tasks, args.slots)
            t_ours.append(t)
            t_build.append(b)
        finally:
            shutil.rmtree(raw_dir, ignore_errors=True)
            shutil.rmtree(sweep_dir, ignore_errors=True)
    n = args.tasks
    raw, ours = statistics.median(t_raw), statistics.median(t_ours)
    ratio = (n / ours) / (n / raw)
    print(f"\n== local: {n} function tasks, {args.slots} slots, {args.rounds} rounds alternated, medians")
    print(f"raw Popen loop (python -c, same function.pkl): {raw:6.2f} s, {n / raw:6.1f} tasks/s"
          f"   (rounds: {', '.join(f'{t:.2f}' for t in t_raw)} s)")
    print(f"hsm_notebook function sweep                  : {ours:6.2f} s, {n / ours:6.1f} tasks/s"
          f"   (rounds: {', '.join(f'{t:.2f}' for t in t_ours)} s)")
    print(f"   + Sweep() construction (pickle + ledger of {n} tasks): {statistics.median(t_build) * 1e3:.0f} ms, "
          "not timed above")
    print(f"ratio (sweep / raw): {ratio:.2f}   target >= 0.80: {'MET' if ratio >= 0.8 else 'NOT MET'}")


# --------------------------------------------------------------------------- SSH


def ssh_source(h, slots: int) -> SSHComputeSource:
    """As tests/contract/conftest.py ``ssh_source``, with the remote interpreter named."""
    return SSHComputeSource(h.host, "bench", slots, port=h.port, username=h.user, client_keys=[str(h.client_key)],
                            known_hosts=str(h.known_hosts), cancel_grace=2.0, keepalive_interval=1.0, python=PY)


def sweep_ssh(h, command, workdir: Path, directory: Path, n: int, slots: int) -> tuple[float, float]:
    """(dispatch window: first submission to last end, start() to results()) in seconds."""
    sweep = None
    try:
        sweep = Sweep(ParameterSpace(grid={"x": list(range(n))}), command, [ssh_source(h, slots)], workdir=workdir,
                      directory=directory, poll_interval=0.2)
        t0 = time.perf_counter()
        sweep.start().wait(timeout=max(1.0, _deadline(n, slots) - time.monotonic()))
        results = sweep.results()
        elapsed = time.perf_counter() - t0
        counts = sweep.counts()
        assert counts.get("COMPLETED") == n, (counts, sweep.status()["error"].dropna().head())
        if callable(command):
            assert (results["y"] == results["x"]).all(), "wrong results"
        first, last = sweep.time_span()
        return last - first, elapsed
    finally:
        _finish(sweep)


def start_costs(tmp: Path, reps: int = 20) -> tuple[float, float]:
    """Seconds per sequential ``PY -c`` start: the command task's ``import sys`` vs the imports a
    function task adds (cloudpickle from a copied folder, as the SSH source uploads it)."""
    lib = tmp / "lib"
    shutil.copytree(Path(cloudpickle.__file__).parent, lib / "cloudpickle", dirs_exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(lib)}
    codes = ("import sys", "import json, pickle, cloudpickle")
    times: dict[str, float] = dict.fromkeys(codes, 0.0)
    for _ in range(reps):  # alternated
        for code in codes:
            t0 = time.perf_counter()
            subprocess.run([PY, "-c", code], env=env, check=True, timeout=30)
            times[code] += time.perf_counter() - t0
    return times[codes[0]] / reps, times[codes[1]] / reps


def ssh_part(args, tmp: Path, workdir: Path) -> None:
    from tests.servers.sshd import SSHServer, missing_requirements

    problem = missing_requirements()
    if problem:
        print(f"\n== SSH: skipped ({problem})")
        return
    remote = subprocess.run([PY, "-c", functions.VERSION_CODE], capture_output=True, text=True).stdout.strip()
    if ".".join(remote.split(".")[:2]) != functions.python_version():
        print(f"\n== SSH: skipped ({PY} is {remote}, this kernel {functions.python_version()}: "
              "the pickle would be refused)")
        return
    n, slots = args.ssh_tasks, args.ssh_slots
    win = {"command": [], "function": []}
    total = {"command": [], "function": []}
    with SSHServer() as server:
        h = server.start(SSH_HOST)
        for r in range(args.rounds):
            for kind, command in (("command", ["python", "job.py"]), ("function", work)):
                w, t = sweep_ssh(h, command, workdir, tmp / f"ssh-{kind}-{r}", n, slots)
                win[kind].append(w)
                total[kind].append(t)
    wc, wf = statistics.median(win["command"]) / n, statistics.median(win["function"]) / n
    tc, tf = statistics.median(total["command"]) / n, statistics.median(total["function"]) / n
    print(f"\n== SSH: loopback sshd {h.host}, remote {PY} ({remote}), {n} tasks, {slots} slots, "
          f"{args.rounds} rounds alternated, medians")
    for kind in ("command", "function"):
        print(f"{kind:8} tasks: {statistics.median(win[kind]) / n * 1e3:6.1f} ms/task in the dispatch window, "
              f"{statistics.median(total[kind]) / n * 1e3:6.1f} ms/task start() to results()"
              f"   (windows: {', '.join(f'{t:.2f}' for t in win[kind])} s; totals: "
              f"{', '.join(f'{t:.2f}' for t in total[kind])} s)")
    print(f"ratio (function / command): window {wf / wc:.2f}, start() to results() {tf / tc:.2f}")
    print(f"target: function within 10% of command per task (window): {'MET' if wf <= 1.10 * wc else 'NOT MET'}")
    bare, imports = start_costs(tmp)
    print(f"for scale, one {PY} start, one at a time: `import sys` {bare * 1e3:.1f} ms, "
          f"`import json, pickle, cloudpickle` {imports * 1e3:.1f} ms ({imports / bare:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1000, help="local function tasks per round")
    parser.add_argument("--slots", type=int, default=8, help="local tasks at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ssh-tasks", type=int, default=60)
    parser.add_argument("--ssh-slots", type=int, default=4)
    parser.add_argument("--no-ssh", action="store_true", help="skip the SSH part")
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"interpreter: {sys.executable} (Python {functions.python_version()}); {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        workdir = tmp_path / "project"  # the (synced) project; sweep folders go beside it
        workdir.mkdir()
        (workdir / "job.py").write_text(COMMAND_JOB)
        local_part(args, tmp_path, workdir)
        if not args.no_ssh:
            ssh_part(args, tmp_path, workdir)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
