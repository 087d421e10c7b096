"""Function tasks forked from a warm interpreter (``sources/warm.py``): each is still its own process
and job.  A crash fails only its task, in words; cancel stops it; a controller killed mid-sweep leaves
forked tasks that the next controller re-adopts and sees complete once; the fork server's death loses
no task; a server that cannot serve safely leaves tasks to start as new interpreters, saying why."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.sources.local_jobs import pid_alive
from tests.helpers import until


def _task_dirs(sweep: Sweep) -> list[Path]:
    return sorted((Path(sweep.directory) / "tasks").iterdir())


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_a_function_task_runs_in_its_own_process_forked_with_its_imports_done(workdir):
    def task(x):
        import os
        import sys

        preloaded = "numpy" in sys.modules  # a new interpreter has not imported it yet
        import numpy

        return {"pid": os.getpid(), "preloaded": preloaded, "y": int(numpy.int64(x) * 2)}

    source = LocalComputeSource("warm", 2)
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), task, [source], workdir=workdir, poll_interval=0.1).run()
    assert sweep.counts() == {"COMPLETED": 3}, sweep.status()[["state", "error"]]
    results = sweep.results()
    assert sorted(results["y"]) == [2, 4, 6]
    assert results["preloaded"].all(), source.warm_state
    pids = set(results["pid"])
    assert len(pids) == 3 and not pids & set(source.fork_servers) and len(source.fork_servers) == 1
    for folder in _task_dirs(sweep):  # a job as the wrapper makes it, with its launch record
        assert (folder / "exit_code").read_text().strip() == "0"
        assert (folder / "launch").read_text().split()[0] == (folder / "pid").read_text().strip()


def test_a_crash_of_a_forked_task_fails_only_that_task_in_words(workdir, sweeps):
    def task(x, folder):
        import os
        import pathlib
        import time

        pathlib.Path(folder, f"pid-{x}").write_text(str(os.getpid()))
        if x == 1:
            os._exit(3)
        if x == 2:
            time.sleep(120)  # SIGKILLed by the test
        return {"y": x}

    source = LocalComputeSource("warm", 2)
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3, 4]}, fixed={"folder": str(workdir)}), task, [source],
                  workdir=workdir, poll_interval=0.1)
    sweeps.append(sweep.start())
    until(lambda: (workdir / "pid-2").exists(), what="task 2 running")
    os.kill(int((workdir / "pid-2").read_text()), signal.SIGKILL)
    sweep.wait(timeout=120)
    status = sweep.status().set_index("x")
    assert list(status.sort_index()["state"]) == ["FAILED", "FAILED", "COMPLETED", "COMPLETED"], status
    assert "exit code 3: hsm_notebook: the task's process exited with code 3 before the function returned" \
        in status.loc[1, "error"]
    assert "exit code 137: hsm_notebook: the task's process was killed by SIGKILL (signal 9)" in status.loc[2, "error"]
    assert sorted(sweep.results()["y"]) == [3, 4]
    assert len(source.fork_servers) == 1  # the server outlived both crashes


def test_cancel_stops_a_forked_task(workdir, sweeps):
    def task(x, folder):
        import os
        import pathlib
        import time

        pathlib.Path(folder, "pid").write_text(str(os.getpid()))
        time.sleep(120)

    sweep = Sweep(ParameterSpace(grid={"x": [1]}, fixed={"folder": str(workdir)}), task,
                  [LocalComputeSource("warm", 1)], workdir=workdir, poll_interval=0.1)
    sweeps.append(sweep.start())
    until(lambda: (workdir / "pid").exists(), what="the task running")
    pid = int((workdir / "pid").read_text())
    sweep.cancel()
    sweep.wait(timeout=60)
    assert sweep.counts() == {"CANCELLED": 1}
    assert not pid_alive(pid)
    (folder,) = _task_dirs(sweep)
    assert (folder / "launch").exists()  # it was forked
    assert (folder / "signalled").read_text() == "TERM\n" and (folder / "exit_code").read_text().strip() == "143"


CONTROLLER = textwrap.dedent('''
    import sys
    from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep

    def work(x, log, flag):
        import os, pathlib, time
        with open(log, "a") as f:
            f.write(f"{x} {os.getpid()}\\n")
        while not pathlib.Path(flag).exists():
            time.sleep(0.05)
        return {"y": x * 2}

    directory, log, flag = sys.argv[1:4]
    sweep = Sweep(ParameterSpace(grid={"x": [0, 1, 2]}, fixed={"log": log, "flag": flag}), work,
                  [LocalComputeSource(max_parallel_jobs=2)], directory=directory, poll_interval=0.1)
    print("started", flush=True)
    sweep.run()
''')


def test_sigkill_of_the_controller_then_attach_readopts_forked_tasks_that_complete_once(workdir):
    (workdir / "controller.py").write_text(CONTROLLER)
    directory, log, flag = workdir / "sweeps" / "warm-crash", workdir / "ran.log", workdir / "go"
    proc = subprocess.Popen([sys.executable, "controller.py", str(directory), str(log), str(flag)], cwd=workdir,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        until(lambda: len(_lines(log)) >= 2, timeout=120, what="two tasks running")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    running = {int(line.split()[1]) for line in _lines(log)}
    assert all(pid_alive(pid) for pid in running)  # they went on without their controller
    sweep = Sweep.attach(directory)
    try:
        until(lambda: set(sweep.status()["state"]) == {"RUNNING", "PENDING"} or len(_lines(log)) > 2,
              what="the running tasks re-adopted")
        flag.touch()
        sweep.wait(timeout=120)
    finally:
        flag.touch()
    assert sweep.counts() == {"COMPLETED": 3}, sweep.status()[["state", "error"]]
    assert sorted(sweep.results()["y"]) == [0, 2, 4]
    ran = sorted(line.split()[0] for line in _lines(log))
    assert ran == ["0", "1", "2"], ran  # each task once
    status = sweep.status()
    assert (status["attempt"] == 1).all()
    assert all((folder / "launch").exists() for folder in _task_dirs(sweep))  # forked, before and after


def test_the_fork_servers_death_loses_no_running_task(workdir, sweeps):
    def work(x, log, flag):
        import os
        import pathlib
        import time

        with open(log, "a") as f:
            f.write(f"{x} {os.getpid()}\n")
        while not pathlib.Path(flag).exists():
            time.sleep(0.05)
        return {"y": x * 2}

    log, flag = workdir / "ran.log", workdir / "go"
    source = LocalComputeSource("warm", 2)
    sweep = Sweep(ParameterSpace(grid={"x": [0, 1, 2]}, fixed={"log": str(log), "flag": str(flag)}), work, [source],
                  workdir=workdir, poll_interval=0.1)
    sweeps.append(sweep.start())
    try:
        until(lambda: len(_lines(log)) >= 2, what="two tasks running")
        (server,) = source.fork_servers
        os.kill(server, signal.SIGKILL)
        until(lambda: not pid_alive(server), what="the fork server gone")
        assert all(pid_alive(int(line.split()[1])) for line in _lines(log))
    finally:
        flag.touch()
    sweep.wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 3}, sweep.status()[["state", "error"]]
    assert sorted(line.split()[0] for line in _lines(log)) == ["0", "1", "2"]  # each once


def test_a_server_that_would_fork_threads_leaves_tasks_to_new_interpreters_saying_why(workdir, caplog):
    def start_a_thread():
        import threading
        import time

        threading.Thread(target=time.sleep, args=(3600,), name="loader-thread", daemon=True).start()
        return 7

    class StartsAThread:  # unpickling it starts a thread, in every process that loads the function
        def __reduce__(self):
            return start_a_thread, ()

    thing = StartsAThread()

    def task(x):
        return {"y": x, "thing": repr(thing)}

    source = LocalComputeSource("warm", 2)
    with caplog.at_level(logging.WARNING, logger="hsm_notebook.sources.warm"):
        sweep = Sweep(ParameterSpace(grid={"x": [1, 2]}), task, [source], workdir=workdir, poll_interval=0.1).run()
    assert sweep.counts() == {"COMPLETED": 2}, sweep.status()[["state", "error"]]
    assert "started Python threads (loader-thread)" in source.warm_state, source.warm_state
    assert "tasks start as new interpreters" in caplog.text and "loader-thread" in caplog.text
    assert not any((folder / "launch").exists() for folder in _task_dirs(sweep))


def test_warm_false_is_recorded_and_rebuilt():
    source = LocalComputeSource("cold", 1, warm=False)
    again = LocalComputeSource.from_description(source.describe())
    assert again.describe()["warm"] is False and "warm" not in LocalComputeSource("w", 1).describe()
