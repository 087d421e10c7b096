"""The engine's run state (one holder of a run's facts), its composed parts, and health as an enum.

No server: the run state and the engine's parts are driven directly or through the real manager
and ledger with the shared ``StubSource`` (a fake: its jobs live in memory) or the local source.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from hsm_notebook import LocalComputeSource, ParameterSpace, Sweep
from hsm_notebook.core import _loop
from hsm_notebook.core.base.source import REFERENCE_KEEP
from hsm_notebook.core.engine.manager import DistributedJobManager
from hsm_notebook.core.engine.monitor import read_health
from hsm_notebook.core.engine.runstate import Live, RunState
from hsm_notebook.core.ledger.store import SweepStore
from hsm_notebook.core.model.state import JobState, SourceHealth
from hsm_notebook.core.spec.job import JobTemplate
from tests.helpers import until
from tests.sources import StubSource


def _manager(tmp_path: Path, sources: list[Any], tasks: int = 2, **kwargs: Any) -> DistributedJobManager:
    space = ParameterSpace(grid={"i": list(range(tasks))})
    store = SweepStore.create(tmp_path / "sweep", {"sweep_id": "rs"}, space.with_ids())
    return DistributedJobManager(sources, store, JobTemplate(("true",)), "rs", poll_interval=0.01, **kwargs)


# -- the run state ----------------------------------------------------------------------------

def test_slots_count_submissions_in_flight_and_live_attempts_until_they_end() -> None:
    run = RunState()
    run.reserve("a")
    assert run.load("a") == 1 and run.load("b") == 0
    run.add(("a", "j1"), Live("t1", 1, "t1-1"))
    run.release("a")
    assert run.load("a") == 1 and run.running("a") == 1 and run.busy() == {"a"}
    run.end(("a", "j1"), JobState.COMPLETED)  # the source said so: the slot is free, the files wait
    assert run.load("a") == 0 and run.busy() == set() and run.any_uncollected()
    assert run.take_uncollected("a") == {"j1": JobState.COMPLETED} and not run.any_uncollected()
    live = run.remove(("a", "j1"))
    assert live.tid == "t1" and run.load("a") == 0 and not run.live
    run.add(("a", "j2"), Live("t2", 1, "t2-1"))
    run.remove(("a", "j2"))  # recorded without an end seen first (e.g. failed over): the slot is freed once
    assert run.load("a") == 0


def test_job_names_are_a_read_only_view_of_the_live_attempts() -> None:
    run = RunState()
    names = run.names("a")
    run.add(("a", "j1"), Live("t1", 1, "t1-1"))
    run.add(("b", "j1"), Live("t2", 1, "t2-1"))
    assert names["j1"] == "t1-1" and "j1" in names and list(names) == ["j1"] and len(names) == 1
    assert run.names("b")["j1"] == "t2-1"
    with pytest.raises(TypeError):
        names["j9"] = "x"  # type: ignore[index]
    run.remove(("a", "j1"))
    assert "j1" not in names and names.get("j1") is None


def test_throughput_counts_each_recorded_end() -> None:
    run = RunState()
    run.finished("a", Live("t1", 1, "t1-1", since=100.0), JobState.COMPLETED, now=110.0)
    run.finished("a", Live("t2", 1, "t2-1", since=100.0, started=104.0), JobState.FAILED, now=110.0)
    t = run.throughput["a"]
    assert (t.completed, t.failed) == (1, 1)
    assert t.average_duration == pytest.approx(8.0)  # (10 + 6) / 2: from RUNNING when it was seen
    assert t.per_minute(120.0) == 1 and t.per_minute(200.0) == 0
    assert run.average_duration("a") == pytest.approx(8.0) and run.average_duration("b") is None


# -- the sources' reference bookkeeping --------------------------------------------------------

def test_a_source_driven_by_hand_keeps_its_finished_jobs_bounded(tmp_path: Path) -> None:
    source = StubSource()
    for i in range(REFERENCE_KEEP + 5):
        source.track(f"j{i}", f"j{i}", {})
        source.update_job_status(f"j{i}", "COMPLETED")
    assert len(source.completed_jobs) == REFERENCE_KEEP and not source.active_jobs
    assert "j0" not in source.completed_jobs and f"j{REFERENCE_KEEP + 4}" in source.completed_jobs
    assert source.stats.completed_jobs == REFERENCE_KEEP + 5 and source.job_names["j3"] == "j3"


def test_a_managed_source_keeps_no_bookkeeping_and_reads_names_from_the_run(workdir: Path) -> None:
    source = LocalComputeSource(max_parallel_jobs=2)
    sweep = Sweep(ParameterSpace(grid={"x": [1, 2, 3]}), ["python", "job.py"], [source],
                  workdir=workdir, poll_interval=0.05)
    sweep.start().wait(timeout=120)
    assert sweep.counts() == {"COMPLETED": 3}
    assert source.active_jobs == {} and source.completed_jobs == {}  # the run state held those facts
    assert dict(source.job_names) == {}  # a view of the live attempts: none are left
    with pytest.raises(TypeError):
        source.job_names["x"] = "y"  # type: ignore[index]
    stats = sweep.sources_status().set_index("source").loc[source.name]
    assert stats["completed"] == 3 and stats["failed"] == 0 and stats["active"] == 0


# -- health, enable, sources_status --------------------------------------------------------------

def test_health_words_read_into_the_enum() -> None:
    assert read_health({"status": "ok"})[0] is SourceHealth.HEALTHY
    status, reason, _ = read_health("Overloaded")
    assert status is SourceHealth.DEGRADED and reason == "overloaded"
    status, reason, _ = read_health({"status": "sideways"})
    assert status is SourceHealth.DEGRADED and "sideways" in (reason or "")


class _SetupFails(StubSource):
    async def setup(self, sweep_dir: Any, sweep_id: str) -> bool:
        raise RuntimeError("no scratch space on the node")


def test_a_failed_setup_is_unhealthy_in_the_monitors_words(tmp_path: Path) -> None:
    good, bad = StubSource("good"), _SetupFails("bad")
    manager = _manager(tmp_path, [good, bad], health_interval=3600)
    _loop.run_sync(manager.run(), timeout=60)
    rows = {r["source"]: r for r in manager.source_stats()}
    assert rows["bad"]["health"] == SourceHealth.UNHEALTHY and rows["bad"]["state"] == "disabled"
    assert "no scratch space" in rows["bad"]["reason"]
    assert manager.monitor.status("bad").status is SourceHealth.UNHEALTHY
    assert bad.stats.health_status == "unhealthy"  # the reference's counters, written by the monitor too
    assert rows["good"]["completed"] == 2


def test_enable_ends_the_fault_streaks_of_that_source_only(tmp_path: Path) -> None:
    manager = _manager(tmp_path, [StubSource("a"), StubSource("b")])
    for name in ("a", "b"):
        for _ in range(2):
            manager.faults.report(name, "polling", RuntimeError("boom"))
    manager.enable("a")
    assert manager.faults.streaks[("a", "polling")] == 0
    assert manager.faults.streaks[("b", "polling")] == 2  # untouched
    assert manager.require_source("b").name == "b"
    with pytest.raises(Exception, match="no source named 'zz'"):
        manager.require_source("zz")


class _Held(StubSource):
    """A fake whose jobs run until the test releases them."""

    def __init__(self, name: str = "held") -> None:
        super().__init__(name)
        self.release = threading.Event()

    async def get_job_status(self, job_id: str) -> Any:
        return "COMPLETED" if self.release.is_set() else "RUNNING"


def test_sources_status_is_a_snapshot_taken_on_the_loop_thread(tmp_path: Path) -> None:
    source = _Held()
    manager = _manager(tmp_path, [source])
    threads: list[int] = []
    take = manager.control.source_stats

    def recording() -> list[dict[str, Any]]:
        threads.append(threading.get_ident())
        return take()

    manager.control.source_stats = recording  # type: ignore[method-assign]
    future = _loop.spawn(manager.run())
    try:
        until(lambda: manager.run_state.running("held") == 2, 30, "both jobs running")
        rows = manager.source_stats()  # from this (test) thread
        assert rows[0]["active"] == 2
        loop_thread = _loop.run_sync(_thread_id())
        assert threads == [loop_thread] and loop_thread != threading.get_ident()
    finally:
        source.release.set()
        future.result(timeout=60)


async def _thread_id() -> int:
    await asyncio.sleep(0)
    return threading.get_ident()
