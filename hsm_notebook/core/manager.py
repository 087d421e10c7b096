"""``DistributedJobManager``: drives one sweep's tasks through one or more sources.

The loop: fill free slots from the ledger's queue, poll each source once for all
of its jobs, record transitions, sleep until a source signals a change or the
poll interval passes.  Every decision is written to the ledger *before* it acts
(the intent to submit is committed before ``submit_job`` is called), so a
controller that dies at any instant can be followed by another that re-adopts
what is running and starts only what never started.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from typing import Iterable, Optional, Sequence

from . import dispatch
from .errors import ConfigError, ConnectError, SourceError
from .job import JobTemplate
from .source import ComputeSource, to_state
from .state import JobOutcome, JobState
from .store import SweepStore

log = logging.getLogger(__name__)

_QUEUE_CHUNK = 1000


class DistributedJobManager:
    """Fans a sweep across ``sources``.  Create it, then ``await run()``."""

    def __init__(
        self,
        sources: Sequence[ComputeSource],
        store: SweepStore,
        template: JobTemplate,
        sweep_id: str,
        *,
        wandb_group: Optional[str] = None,
        poll_interval: float = 1.0,
        strategy: str = "least_loaded",
    ):
        if not sources:
            raise ConfigError("give at least one compute source", "sources")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names must be unique, got {names}", "sources")
        if strategy not in dispatch.STRATEGIES:
            raise ConfigError(f"must be one of {dispatch.STRATEGIES}, got {strategy!r}", "strategy")
        self.sources = {s.name: s for s in sources}
        self.store, self.template, self.sweep_id = store, template, sweep_id
        self.wandb_group, self.poll_interval, self.strategy = wandb_group, poll_interval, strategy
        self._active: dict[tuple[str, str], tuple[str, int]] = {}  # (source, job_id) -> (task, attempt)
        self._queue: collections.deque = collections.deque()
        self._cursor = -1
        self._exhausted = False
        self._reserved: dict[str, int] = collections.Counter()
        self._turn = 0
        self._wake: asyncio.Event | None = None
        self._recovered = asyncio.Event()  # set once in-flight jobs are re-adopted (or run() failed)
        self.running = False
        self.revive_interval = 5.0
        self._uncollected: dict[str, dict[str, JobState]] = {}
        self._collecting: dict[str, asyncio.Task] = {}
        self._last_revive = 0.0

    # -- the main loop -------------------------------------------------------------------
    async def run(self) -> None:
        self._wake = asyncio.Event()
        self.running = True
        try:
            await self._setup()
            await self._recover()
            self._recovered.set()
            while True:
                await self._fill()
                await self._poll()
                if not self._active and not self._has_pending():
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), self._interval())
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            self.running = False
            self._recovered.set()
            for source in self.sources.values():
                try:
                    await source.cleanup()
                except Exception as exc:  # noqa: BLE001 - a user's source must not mask the real outcome
                    log.warning("cleanup of %s failed: %s", source.name, exc)

    def _interval(self) -> float:
        return min([self.poll_interval, *(s.poll_interval for s in self.sources.values() if s.active_jobs)])

    def notify(self) -> None:
        """Wake the loop (thread-safe callers use ``loop.call_soon_threadsafe``)."""
        if self._wake is not None:
            self._wake.set()

    async def _setup(self) -> None:
        for source in self.sources.values():
            source.bind(self.template, self.store.directory, self.sweep_id, self.notify)
            try:
                ok = await source.setup(self.store.directory, self.sweep_id)
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the source in whatever it raised
                raise SourceError(f"setup failed: {exc}", source.name) from exc
            if ok is False:
                raise SourceError("setup() returned False; check the source's health_check()", source.name)

    async def _recover(self) -> None:
        """Re-adopt attempts that a previous controller left in flight."""
        for row in self.store.in_flight():
            tid, attempt, job_id = row["task_id"], row["attempt"], row["job_id"]
            source = self.sources.get(row["source"])
            if source is None:
                raise ConfigError(
                    f"task {tid} is in flight on source {row['source']!r}, which was not given; "
                    f"pass that source too (given: {list(self.sources)})",
                    "sources",
                )
            if job_id is None:  # the controller died between intent and submission
                job_id = await source.recover_job(row["job_name"])
                if job_id is None:
                    self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error="controller stopped before the job started"))
                    self.store.reset([JobState.LOST], [tid])
                    continue
                self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id, detail="re-adopted")
            source.track(job_id, row["job_name"], json.loads(row["params"]), source.job_dir(row["job_name"]))
            self._active[(source.name, job_id)] = (tid, attempt)

    # -- dispatch ----------------------------------------------------------------------
    def _has_pending(self) -> bool:
        if not self._queue and not self._exhausted:
            rows = self.store.pending(_QUEUE_CHUNK, self._cursor)
            self._queue.extend((r["task_id"], r["params"]) for r in rows)
            if rows:
                self._cursor = rows[-1]["idx"]
            else:
                self._exhausted = True
        return bool(self._queue)

    async def _fill(self) -> None:
        batch = []
        sources = list(self.sources.values())
        while self._has_pending():
            source = dispatch.choose(sources, self._reserved, self.strategy, self._turn)
            if source is None:
                break
            self._turn += 1
            self._reserved[source.name] += 1
            batch.append((source, *self._queue.popleft()))
        if batch:
            await asyncio.gather(*(self._submit(s, tid, params) for s, tid, params in batch))

    async def _submit(self, source: ComputeSource, tid: str, params_json: str) -> None:
        params = json.loads(params_json)
        try:
            attempt, job_name = self.store.begin_attempt(tid, source.name)
            try:
                job_id = await source.submit_job(params, job_name, self.sweep_id, self.wandb_group)
            except ConnectError as exc:  # the source is unreachable: the task waits for another chance
                source.stats.health_status = "unhealthy"
                self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=f"{source.name} unreachable: {exc}"))
                self.store.reset([JobState.LOST], [tid])
                self.requeue()
                return
            except Exception as exc:  # noqa: BLE001 - any other source failure becomes the task's error
                self.store.finish(tid, attempt, JobOutcome(JobState.FAILED, error=f"submission to {source.name} failed: {exc}"))
                return
            self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id)
            if job_id not in source.active_jobs:
                source.track(job_id, job_name, params, source.job_dir(job_name))
            self._active[(source.name, job_id)] = (tid, attempt)
        finally:
            self._reserved[source.name] -= 1

    # -- polling -----------------------------------------------------------------------
    async def _poll(self) -> None:
        """One round: every source with active jobs is asked once, all sources at the same time."""
        await asyncio.gather(*(self._poll_source(s) for s in self.sources.values()
                               if s.active_jobs or self._uncollected.get(s.name)))
        await self._revive()

    async def _revive(self) -> None:
        """Ask unhealthy idle sources for their health now and then, so they can come back."""
        now = time.monotonic()
        if now - self._last_revive < self.revive_interval:
            return
        self._last_revive = now
        idle = [s for s in self.sources.values() if s.stats.health_status == "unhealthy" and not s.active_jobs]
        for source, health in zip(idle, await asyncio.gather(*(s.health_check() for s in idle), return_exceptions=True)):
            if isinstance(health, dict):
                source.stats.health_status = health.get("status", "unknown")

    async def _poll_source(self, source: ComputeSource) -> None:
        ids = list(source.active_jobs)
        try:
            states = await source.poll(ids)
        except Exception as exc:  # noqa: BLE001 - a failed poll is retried next round
            log.warning("polling %s failed: %s", source.name, exc)
            return
        finished: dict[str, JobState] = {}
        with self.store.transaction():
            for job_id, raw in states.items():
                state = to_state(raw)
                if job_id not in source.active_jobs:
                    continue
                if state.is_terminal:
                    finished[job_id] = state
                    source.update_job_status(job_id, state)  # its slot is free from now on
                elif source.active_jobs[job_id].status != state:
                    tid, attempt = self._active[(source.name, job_id)]
                    self.store.set_state(tid, attempt, state)
                    source.update_job_status(job_id, state)
        self._uncollected.setdefault(source.name, {}).update(finished)
        todo = self._uncollected[source.name]
        if todo and source.name not in self._collecting:
            batch = dict(todo)
            todo.clear()
            self._collecting[source.name] = asyncio.get_running_loop().create_task(self._collect(source, batch))

    async def _collect(self, source: ComputeSource, finished: dict[str, JobState]) -> None:
        """Bring finished jobs' files home and record their outcomes, off the dispatch path:
        new jobs start while the finished ones are collected."""
        try:
            try:
                await source.collect_results(list(finished))
            except Exception as exc:  # noqa: BLE001 - collect is retried next round
                log.warning("collecting from %s failed: %s", source.name, exc)
                self._uncollected[source.name].update(finished)
                return
            outcomes = {job_id: await source.outcome(job_id, state) for job_id, state in finished.items()}
            with self.store.transaction():
                for job_id, outcome in outcomes.items():
                    tid, attempt = self._active.pop((source.name, job_id))
                    self.store.finish(tid, attempt, outcome)
        finally:
            del self._collecting[source.name]
            self.notify()

    # -- control -----------------------------------------------------------------------
    def requeue(self) -> None:
        """Tasks were put back to PENDING in the ledger: read the queue again from the start."""
        self._queue.clear()
        self._cursor, self._exhausted = -1, False
        self.notify()

    # -- control -----------------------------------------------------------------------
    async def cancel(self, task_ids: Optional[Iterable[str]] = None) -> int:
        """Cancel queued and running tasks (all when ``task_ids`` is None)."""
        await self._recovered.wait()
        wanted = None if task_ids is None else set(task_ids)
        n = self.store.cancel_pending(wanted)
        self._queue = collections.deque(q for q in self._queue if wanted is not None and q[0] not in wanted)
        if wanted is None:
            self._exhausted = True
        jobs = [(self.sources[s], job_id) for (s, job_id), (tid, _) in self._active.items()
                if wanted is None or tid in wanted]
        results = await asyncio.gather(*(src.cancel_job(job_id) for src, job_id in jobs), return_exceptions=True)
        self.notify()
        return n + sum(1 for r in results if r is True)
