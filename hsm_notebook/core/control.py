"""What users do to a running sweep's manager: cancel, add, drain, disable, enable; and
the per-source stats they look at.  A mixin of ``DistributedJobManager``: it uses the
manager's state (sources, gates, live attempts, ledger, monitor) and changes nothing else."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Iterable, Optional

from .errors import ConfigError
from .gate import By, Gate, Mode
from .source import ComputeSource

#: How long ``cancel()`` (and ``complete()`` right after one) waits for the cancels it asked for to
#: be recorded: a source that cannot be reached must not hold the caller for ever.
CANCEL_WAIT = 30.0


class ControlMixin:
    # -- control -----------------------------------------------------------------------
    async def cancel(self, task_ids: Optional[Iterable[str]] = None, source: Optional[str] = None) -> int:
        """Cancel waiting, in-flight and running tasks: all, those in ``task_ids``, or those on
        ``source``.  A submission still in flight is cancelled the moment it returns; the request
        holds until the task has ended (it is never retried).  Returns once every cancel it asked
        for is recorded in the ledger (at most ``CANCEL_WAIT`` s), so ``status()`` says CANCELLED and
        ``complete()`` right after runs the task again."""
        await self._recovered.wait()
        self._raise_if_stopped()
        wanted = None if task_ids is None else set(task_ids)
        if source is not None:
            self._need(source)
        n, asked = 0, []
        if source is None:
            n = self.store.cancel_pending(wanted)
            self._queue = collections.deque(q for q in self._queue if wanted is not None and q[0] not in wanted)
            if wanted is None:
                self._exhausted = True
            self._next_retry = self.store.next_retry()  # cancelled tasks no longer wait out a backoff
        for tid, (src, _) in self._submitting.items():
            if (wanted is None or tid in wanted) and (source is None or src == source) and tid not in self._cancel:
                self._cancel.add(tid)
                asked.append(tid)
                n += 1
        jobs = [(self.sources[s], job_id, live.tid) for (s, job_id), live in self.live.items()
                if not live.orphan and live.ended is None
                and (wanted is None or live.tid in wanted) and (source is None or s == source)]
        self._cancel.update(tid for *_, tid in jobs)
        results = await asyncio.gather(*(self._cancel_one(src, job_id) for src, job_id, _ in jobs),
                                        return_exceptions=True)
        for (src, _, tid), result in zip(jobs, results):
            if isinstance(result, BaseException):
                self._fault(src, "cancelling", result)
            elif result is True:
                asked.append(tid)
        await self.cancels_recorded(asked)
        return n + sum(1 for r in results if r is True)

    async def cancels_recorded(self, task_ids: Iterable[str] | None = None, timeout: float = CANCEL_WAIT) -> None:
        """Wait until the cancels asked for (of ``task_ids``, default: all) are recorded: each task
        has ended in the ledger.  Gives up after ``timeout`` s (the request still holds) or when the
        manager stops."""
        wanted = set(self._cancel if task_ids is None else task_ids)
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            wanted = {tid for tid in wanted if tid in self._cancel and not self.store.task_state(tid).is_terminal}
            if not wanted:
                return
            await asyncio.sleep(0.05)

    async def add_source(self, source: ComputeSource) -> None:
        """A new source joins the running sweep."""
        if source.name in self.sources:
            raise ConfigError(f"a source named {source.name!r} is already in the sweep", "sources")
        source.validate(self.template)
        await self._setup(source)
        self.sources[source.name] = source
        self.gates[source.name] = Gate()
        self.monitor.watch(source)
        self.notify()

    def drain(self, name: str) -> None:
        """No new tasks go to ``name``; its running tasks finish."""
        self._need(name)
        self.gates[name].close(Mode.DRAINING, By.USER, "draining")
        self.notify()

    async def disable(self, name: str) -> int:
        """No new tasks go to ``name``; its running tasks are stopped and queued again elsewhere."""
        self._need(name)
        self._disable(self.sources[name], By.USER, "disabled by the user")
        jobs = [j for (s, j), live in self.live.items() if s == name and live.orphan and live.ended is None]
        results = await asyncio.gather(*(self._cancel_one(self.sources[name], j) for j in jobs), return_exceptions=True)
        self.notify(name)
        return sum(1 for r in results if r is True)

    def enable(self, name: str) -> None:
        """Undo ``drain``/``disable`` (also a source disabled because it kept failing)."""
        self._need(name)
        self.gates[name].open(Mode.ENABLED)
        self.faults.streaks.clear()
        self.notify()

    def _need(self, name: str) -> None:
        if name not in self.sources:
            raise ConfigError(f"no source named {name!r}; sources: {list(self.sources)}", "source")

    # -- stats -------------------------------------------------------------------------
    def source_stats(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = []
        for name, s in self.sources.items():
            h = self.monitor.health.get(name)
            gate = self.gates[name]
            done = [t for t in self._done_times[name] if now - t <= 60]
            stats = s.stats
            rows.append({
                "source": name, "type": s.source_type, "state": gate.mode.value,
                "health": h.status if h else stats.health_status,
                "reason": gate.reason or (h.reason if h else None) or self.faults.summary(name),
                "slots": s.max_parallel_jobs, "active": self._load[name], "completed": stats.completed_jobs,
                "failed": stats.failed_jobs, "per_minute": len(done),
                "avg_duration_s": round(stats.average_job_duration, 2) if stats.average_job_duration else None,
                "problems": self.faults.summary(name),
            })
        return rows
