"""Issue 21: ``SweepExecutor``, a ``concurrent.futures.Executor`` over a sweep's sources.

Calls are tasks (real jobs): results and the call's own exceptions come back, ``map`` keeps the
order, ``cancel`` stops a running call and keeps a waiting one from starting, an ask/tell loop and
nevergrad's ``minimize(executor=...)`` drive it, every source runs its calls, and after the
controller is SIGKILLed ``SweepExecutor.attach`` gives back every call's future with each call run once.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from hsm_notebook import ConfigError, LocalComputeSource, SweepExecutor
from hsm_notebook.core.executor import CallError, RemoteTraceback
from tests.contract.conftest import ssh_source
from tests.helpers import until


@pytest.fixture()
def executors():
    """Executors a test made (append them): their calls cancelled and their runs ended at the end."""
    made: list[SweepExecutor] = []
    yield made
    for ex in made:
        for future in ex.futures.values():
            future.cancel()
        ex.shutdown(wait=True)


def _local(workdir: Path, executors: list, slots: int = 3) -> SweepExecutor:
    ex = SweepExecutor([LocalComputeSource("here", slots, cancel_grace=2.0)], workdir=workdir, poll_interval=0.1)
    executors.append(ex)
    return ex


def test_submit_and_map_give_back_values_and_what_the_call_raised(workdir, executors):
    class Point:  # defined in the "notebook": travels by value, comes back as itself
        def __init__(self, x):
            self.x = x

    def scaled(x, *, factor=1):
        return Point(x * factor)

    def fails(key):
        raise KeyError(f"no key {key}")

    def dies(code):
        print("dying without a word", file=sys.stderr, flush=True)
        os._exit(code)

    async def later(x):
        return x + 1

    ex = _local(workdir, executors)
    point = ex.submit(scaled, 3, factor=2).result(120)
    assert type(point).__name__ == "Point" and point.x == 6
    assert list(ex.map(lambda a, b: a * b, [1, 2, 3], [4, 5, 6], timeout=120)) == [4, 10, 18]
    assert ex.submit(later, 1).result(120) == 2

    failing = ex.submit(fails, "k")
    with pytest.raises(KeyError, match="no key k") as raised:
        failing.result(120)
    assert isinstance(raised.value.__cause__, RemoteTraceback)  # the job's traceback, as ProcessPoolExecutor's
    assert "in fails" in str(raised.value.__cause__) and "KeyError" in str(raised.value.__cause__)
    assert isinstance(failing.exception(), KeyError)

    died = ex.submit(dies, 3)
    with pytest.raises(CallError, match="dying without a word") as lost:
        died.result(120)
    assert lost.value.task_id == died.task_id and "FAILED" in str(lost.value)

    results = ex.map(lambda x: 1 / x, [1, 0], timeout=120)
    assert next(results) == 1.0
    with pytest.raises(ZeroDivisionError):
        next(results)

    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(scaled, 1)
    status = ex.sweep.status().sort_values("trial")
    futures = list(ex.futures.values())
    assert list(status["task_id"]) == [f.task_id for f in futures]  # one task per call, in submission order
    assert [f.number for f in futures] == list(range(len(futures))) == list(status["trial"])
    assert list(status["fn"][:5]) == ["scaled", "<lambda>", "<lambda>", "<lambda>", "later"]
    assert status["args"].iloc[0] == "3, factor=2"
    assert ex.sweep.counts() == {"COMPLETED": 6, "FAILED": 3}


def test_calls_that_cannot_reach_a_job_are_refused_before_anything_is_written(workdir, executors):
    ex = _local(workdir, executors)
    with pytest.raises(ConfigError, match=r"len\(<unlocked _thread.*cannot be sent to a job: .*uses argument 0 = "):
        ex.submit(len, threading.Lock())
    with pytest.raises(ConfigError, match="command line") as big:
        ex.submit(len, os.urandom(200_000))
    assert big.value.field == "args" and "pass its path" in str(big.value)
    with pytest.raises(ConfigError, match="must be callable"):
        ex.submit(42)
    with pytest.raises(ConfigError):  # map is all or nothing: the last item cannot be sent
        ex.map(len, ["a", "b", threading.Lock()])
    assert ex.sweep.counts() == {} and ex.futures == {}
    assert ex.submit(len, "abc").result(120) == 3


def test_cancel_stops_a_running_call_and_a_waiting_one_never_starts(workdir, executors):
    marks = workdir / "marks"
    marks.mkdir()

    def hold(name, folder):
        import pathlib
        import time

        pathlib.Path(folder, name).write_text("started")
        time.sleep(300)

    ex = _local(workdir, executors, slots=1)
    running, waiting = ex.submit(hold, "a", str(marks)), ex.submit(hold, "b", str(marks))
    until(lambda: (marks / "a").exists() and running.running(), 60, "the first call running")
    assert not waiting.running() and not waiting.done()
    assert waiting.cancel() and running.cancel()
    done, _ = cf.wait([running, waiting], timeout=5)  # waiters are told at once
    assert done == {running, waiting} and running.cancelled() and waiting.cancelled()
    with pytest.raises(cf.CancelledError):
        running.result()
    until(lambda: ex.sweep.counts() == {"CANCELLED": 2}, 60, "both tasks cancelled in the ledger")

    third, fourth = ex.submit(hold, "c", str(marks)), ex.submit(hold, "d", str(marks))
    until(lambda: (marks / "c").exists() and third.running(), 60, "the third call running")
    ex.shutdown(wait=False, cancel_futures=True)  # as the stdlib's: only calls not started are cancelled
    assert fourth.cancelled() and not third.done()
    assert third.cancel()
    ex.sweep.wait(timeout=120)
    assert ex.sweep.counts() == {"CANCELLED": 4}
    assert sorted(p.name for p in marks.iterdir()) == ["a", "c"]  # b and d never started


def test_an_ask_tell_loop_drives_the_executor_two_points_at_a_time(workdir, executors):
    def loss(x, y):
        return (x - 0.3) ** 2 + (y + 0.2) ** 2

    rng = random.Random(5)
    ex = _local(workdir, executors, slots=2)
    in_flight: dict[cf.Future, tuple[float, float]] = {}
    told: list[tuple[tuple[float, float], float]] = []
    asked = 0

    def ask() -> None:
        nonlocal asked
        point = (rng.uniform(-1, 1), rng.uniform(-1, 1))
        in_flight[ex.submit(loss, *point)] = point
        asked += 1

    ask()
    ask()
    while in_flight:
        done, _ = cf.wait(in_flight, timeout=120, return_when=cf.FIRST_COMPLETED)
        assert done, "no call ended in 120 s"
        for future in done:
            told.append((in_flight.pop(future), future.result()))
            if asked < 8:
                ask()
    ex.shutdown()
    assert len(told) == 8 and all(value == loss(*point) for point, value in told)
    results = ex.sweep.results()
    assert sorted(results["value"]) == sorted(value for _, value in told)  # a returned number is a metric
    assert ex.sweep.counts() == {"COMPLETED": 8}


def test_nevergrad_minimizes_through_the_executor(workdir, executors):
    import nevergrad as ng

    def loss(x):
        return (x - 0.25) ** 2

    ex = _local(workdir, executors, slots=2)
    optimizer = ng.optimizers.OnePlusOne(parametrization=ng.p.Scalar(), budget=6, num_workers=2)
    told: list[tuple[float, float]] = []
    optimizer.register_callback("tell", lambda opt, candidate, value: told.append((candidate.value, value)))
    best = optimizer.minimize(loss, executor=ex, batch_mode=False)
    ex.shutdown()
    assert len(told) == 6 and all(value == loss(x) for x, value in told)  # each value came from its call
    assert sorted(ex.sweep.results()["value"]) == sorted(value for _, value in told)
    assert best.value in [x for x, _ in told] and ex.sweep.counts() == {"COMPLETED": 6}


CONTROLLER = textwrap.dedent(
    """
    import sys, time
    from hsm_notebook import LocalComputeSource, SweepExecutor
    directory, lines, release = sys.argv[1:4]

    def work(x, lines, release):
        import os, time
        with open(lines, "a") as f:
            f.write(f"{x}\\n")
        while x >= 3 and not os.path.exists(release):  # the later calls run until the test releases them
            time.sleep(0.05)
        return x * x

    ex = SweepExecutor([LocalComputeSource(max_parallel_jobs=3)], directory=directory, poll_interval=0.1)
    futures = [ex.submit(work, x, lines, release) for x in range(8)]
    print([f.result(120) for f in futures[:3]], flush=True)
    time.sleep(600)  # SIGKILLed here
    """
)


def test_after_the_controller_is_killed_attach_gives_back_every_call_each_run_once(workdir):
    directory, lines, release = workdir / "sweeps" / "calls", workdir / "lines.txt", workdir / "release"
    (workdir / "controller.py").write_text(CONTROLLER)
    proc = subprocess.Popen([sys.executable, "controller.py", str(directory), str(lines), str(release)],
                            cwd=workdir, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "[0, 1, 4]"
        until(lambda: lines.exists() and len(lines.read_text().splitlines()) == 6, 60, "calls 3 to 5 running")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ex = SweepExecutor.attach(directory)
    try:
        futures = list(ex.futures.values())
        assert [f.number for f in futures] == list(range(8))
        until(lambda: all(f.done() for f in futures[:3]), 60, "the finished calls resolved from the ledger")
        assert not any(f.done() for f in futures[3:])  # running (re-adopted) or waiting: not ended
        release.write_text("")
        assert [f.result(120) for f in futures] == [x * x for x in range(8)]
    finally:
        ex.shutdown()
    assert sorted(int(x) for x in lines.read_text().split()) == list(range(8))  # each call ran once
    assert ex.sweep.counts() == {"COMPLETED": 8}


@pytest.fixture(params=["local", "ssh", "slurm"])
def any_source(request):
    """A source of each kind (the servers come from the session's fixtures)."""
    if request.param == "local":
        return LocalComputeSource("calls", 2, cancel_grace=2.0)
    if request.param == "ssh":
        return ssh_source(request.getfixturevalue("ssh_host"), "calls", 2)
    from hsm_notebook import SlurmComputeSource

    cluster = request.getfixturevalue("slurm_cluster")
    return SlurmComputeSource("calls", 2, partition=cluster.partition, slurm_env=dict(cluster.env), poll_interval=0.3)


def test_calls_run_on_every_source(any_source, workdir, executors):
    class Box:
        def __init__(self, v):
            self.v = v

    def flip(box, *, sign):
        return {"value": sign * box.v, "box": Box(-box.v)}

    def refuse(x):
        raise ValueError(f"{x} is not welcome")

    ex = SweepExecutor([any_source], workdir=workdir, poll_interval=0.2)
    executors.append(ex)
    flipped, refused = ex.submit(flip, Box(4), sign=-1), ex.submit(refuse, 3)
    value = flipped.result(180)
    assert value["value"] == -4 and type(value["box"]).__name__ == "Box" and value["box"].v == -4
    with pytest.raises(ValueError, match="3 is not welcome") as raised:
        refused.result(180)
    assert "in refuse" in str(raised.value.__cause__)
    ex.shutdown()
    assert ex.sweep.counts() == {"COMPLETED": 1, "FAILED": 1}


def test_leaving_the_with_block_waits_for_the_calls_and_ends_the_run(workdir):
    def square(x):
        return x * x

    outcome: list[object] = []

    def use() -> None:
        try:
            with SweepExecutor([LocalComputeSource(max_parallel_jobs=2)], workdir=workdir, poll_interval=0.1) as ex:
                futures = [ex.submit(square, x) for x in range(3)]
            outcome.append(([f.result(timeout=0) for f in futures], ex.sweep.running, ex.sweep.done))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=use, daemon=True)
    thread.start()
    thread.join(timeout=120)  # a shutdown that hangs fails here rather than hanging the suite
    assert outcome, "shutdown(wait=True) did not return: the run never ended"
    assert outcome[0] == ([0, 1, 4], False, True)  # every call ended when the block was left; the run too
