"""What users do to a running sweep's engine: cancel, add, drain, disable, enable; and the
per-source stats they look at (a snapshot of the run state, gates, health and faults)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..base.source import ComputeSource
from ..ledger.store import SweepStore
from ..model.errors import ConfigError
from .gate import By, Faults, Gate, Mode
from .monitor import HealthMonitor
from .polling import Poller, cancel_one
from .runstate import RunState
from .submission import Dispatcher
from .supervisor import Disable, Supervisor

#: How long ``cancel()`` (and ``complete()`` right after one) waits for the cancels it asked for to
#: be recorded: a source that cannot be reached must not hold the caller for ever.
CANCEL_WAIT = 30.0


class Control:
    """Uses: the run state (live attempts, submissions in flight, cancels), the ledger, the sources
    and gates, faults, the monitor (watch a new source; health for the stats), the supervisor, the
    dispatcher (its queue); from the engine: ``setup`` (a new source), ``disable`` (fail a source
    over), ``notify``, ``running`` and ``recovered`` (set once re-adoption is done)."""

    def __init__(self, run: RunState, store: SweepStore, sources: dict[str, ComputeSource], gates: dict[str, Gate],
                 faults: Faults, monitor: HealthMonitor, supervisor: Supervisor, dispatcher: Dispatcher,
                 poller: Poller, *, setup: Callable[[ComputeSource], Awaitable[None]], disable: Disable,
                 validate: Callable[[ComputeSource], None], notify: Callable[..., None],
                 running: Callable[[], bool], recovered: asyncio.Event) -> None:
        self.run, self.store, self.sources, self.gates, self.faults = run, store, sources, gates, faults
        self.monitor, self.supervisor, self.dispatcher, self.poller = monitor, supervisor, dispatcher, poller
        self.setup, self.disable_source, self.validate, self.notify = setup, disable, validate, notify
        self.running, self.recovered = running, recovered

    def need(self, name: str) -> ComputeSource:
        """The source named ``name``; ConfigError naming the sources when there is none."""
        if name not in self.sources:
            raise ConfigError(f"no source named {name!r}; sources: {list(self.sources)}", "source")
        return self.sources[name]

    async def cancel(self, task_ids: Iterable[str] | None = None, source: str | None = None) -> int:
        """Cancel waiting, in-flight and running tasks: all, those in ``task_ids``, or those on
        ``source``.  A submission still in flight is cancelled the moment it returns; the request
        holds until the task has ended (it is never retried).  Returns once every cancel it asked
        for is recorded in the ledger (at most ``CANCEL_WAIT`` s), so ``status()`` says CANCELLED and
        ``complete()`` right after runs the task again."""
        await self.recovered.wait()
        self.supervisor.raise_if_stopped()
        wanted = None if task_ids is None else set(task_ids)
        if source is not None:
            self.need(source)
        n, asked = 0, []
        cancels = self.run.cancels
        if source is None:
            n = self.store.cancel_pending(wanted)
            self.dispatcher.drop(wanted)
        for tid, (on, _) in self.run.submitting.items():
            if (wanted is None or tid in wanted) and (source is None or on == source) and tid not in cancels:
                cancels.add(tid)
                asked.append(tid)
                n += 1
        jobs = [(self.sources[s], job_id, live.tid) for (s, job_id), live in self.run.live.items()
                if not live.orphan and live.ended is None
                and (wanted is None or live.tid in wanted) and (source is None or s == source)]
        cancels.update(tid for *_, tid in jobs)
        results = await asyncio.gather(*(cancel_one(src, job_id, self.notify) for src, job_id, _ in jobs),
                                       return_exceptions=True)
        for (src, _, tid), result in zip(jobs, results, strict=True):
            if isinstance(result, BaseException):
                self.supervisor.fault(src, "cancelling", result)
            elif result is True:
                asked.append(tid)
        await self.cancels_recorded(asked)
        return n + sum(1 for r in results if r is True)

    async def cancels_recorded(self, task_ids: Iterable[str] | None = None, timeout: float = CANCEL_WAIT) -> None:
        """Wait until the cancels asked for (of ``task_ids``, default: all) are recorded: each task
        has ended in the ledger.  Gives up after ``timeout`` s (the request still holds) or when the
        engine stops."""
        wanted = set(self.run.cancels if task_ids is None else task_ids)
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            wanted = {tid for tid in wanted if tid in self.run.cancels and not self.store.task_state(tid).is_terminal}
            if not wanted:
                return
            await asyncio.sleep(0.05)

    async def add_source(self, source: ComputeSource) -> None:
        """A new source joins the running sweep."""
        if source.name in self.sources:
            raise ConfigError(f"a source named {source.name!r} is already in the sweep", "sources")
        self.validate(source)
        await self.setup(source)
        self.sources[source.name] = source
        self.gates[source.name] = Gate()
        self.monitor.watch(source)
        self.notify()

    def drain(self, name: str) -> None:
        """No new tasks go to ``name``; its running tasks finish."""
        self.need(name)
        self.gates[name].close(Mode.DRAINING, By.USER, "draining")
        self.notify()

    async def disable(self, name: str) -> int:
        """No new tasks go to ``name``; its running tasks are stopped and queued again elsewhere."""
        source = self.need(name)
        self.disable_source(source, By.USER, "disabled by the user")
        jobs = [j for (s, j), live in self.run.live.items() if s == name and live.orphan and live.ended is None]
        results = await asyncio.gather(*(cancel_one(source, j, self.notify) for j in jobs), return_exceptions=True)
        self.notify(name)
        return sum(1 for r in results if r is True)

    def enable(self, name: str) -> None:
        """Undo ``drain``/``disable`` (also a source disabled because it kept failing): that source's
        gate opens and its fault streaks end; no other source is touched."""
        self.need(name)
        self.gates[name].open(Mode.ENABLED)
        self.faults.forget_streaks(name)
        self.notify(name)

    # -- stats -------------------------------------------------------------------------
    def source_stats(self) -> list[dict[str, Any]]:
        """One row per source; call it on the loop thread (``DistributedJobManager.source_stats``
        brings a call from another thread there)."""
        now = time.time()
        rows = []
        for name, s in self.sources.items():
            h = self.monitor.status(name)
            gate = self.gates[name]
            t = self.run.throughput[name]
            rows.append({
                "source": name, "type": s.source_type, "state": gate.mode.value,
                "health": h.status.value,
                "reason": gate.reason or h.reason or self.faults.summary(name),
                "slots": s.max_parallel_jobs, "active": self.run.running(name), "completed": t.completed,
                "failed": t.failed, "per_minute": t.per_minute(now),
                "avg_duration_s": round(t.average_duration, 2) if t.average_duration else None,
                "problems": self.faults.summary(name),
            })
        return rows
