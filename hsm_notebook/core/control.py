"""What users do to a running sweep's manager: cancel, add, drain, disable, enable; and
the per-source stats they look at.  A mixin of ``DistributedJobManager``: it uses the
manager's state (sources, active attempts, ledger, monitor) and changes nothing else."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Iterable, Optional

from .errors import ConfigError
from .source import ComputeSource


class ControlMixin:
    # -- control -----------------------------------------------------------------------
    async def cancel(self, task_ids: Optional[Iterable[str]] = None, source: Optional[str] = None) -> int:
        """Cancel queued and running tasks: all, those in ``task_ids``, or those on ``source``."""
        await self._recovered.wait()
        wanted = None if task_ids is None else set(task_ids)
        n = 0
        if source is None:
            n = self.store.cancel_pending(wanted)
            self._queue = collections.deque(q for q in self._queue if wanted is not None and q[0] not in wanted)
            if wanted is None:
                self._exhausted = True
            self._next_retry = self.store.next_retry()  # cancelled tasks no longer wait out a backoff
        jobs = [(self.sources[s], job_id) for (s, job_id), (tid, _) in self._active.items()
                if (wanted is None or tid in wanted) and (source is None or s == source)]
        self._cancel_requested.update(self._active[(src.name, j)][0] for src, j in jobs)
        results = await asyncio.gather(*(src.cancel_job(job_id) for src, job_id in jobs), return_exceptions=True)
        for src, _ in jobs:
            self.notify(src.name)
        return n + sum(1 for r in results if r is True)

    async def add_source(self, source: ComputeSource) -> None:
        """A new source joins the running sweep."""
        if source.name in self.sources:
            raise ConfigError(f"a source named {source.name!r} is already in the sweep", "sources")
        source.validate(self.template)
        await self._setup(source)
        self.sources[source.name] = source
        self.monitor.watch(source)
        self.notify()

    def drain(self, name: str) -> None:
        """No new tasks go to ``name``; its running tasks finish."""
        self._need(name)
        self._closed[name] = "draining"
        self.notify()

    async def disable(self, name: str) -> int:
        """No new tasks go to ``name``; its running tasks are stopped and queued again elsewhere."""
        self._need(name)
        self._closed[name] = "disabled by the user"
        await self._on_disable(self.sources[name], "disabled by the user")
        jobs = [j for (s, j) in self._orphans if s == name]
        results = await asyncio.gather(*(self.sources[name].cancel_job(j) for j in jobs), return_exceptions=True)
        self.notify(name)
        return sum(1 for r in results if r is True)

    def enable(self, name: str) -> None:
        self._need(name)
        self._closed.pop(name, None)
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
            done = [t for t in self._done_times[name] if now - t <= 60]
            stats = s.get_stats()
            rows.append({
                "source": name, "type": s.source_type, "state": self._closed.get(name) or (
                    "disabled" if h is not None and not h.enabled else "enabled"),
                "health": h.status if h else stats.health_status, "reason": h.reason if h else None,
                "slots": s.max_parallel_jobs, "active": len(s.active_jobs), "completed": stats.completed_jobs,
                "failed": stats.failed_jobs, "per_minute": len(done),
                "avg_duration_s": round(stats.average_job_duration, 2) if stats.average_job_duration else None,
            })
        return rows
