"""``DistributedJobManager``: drives one sweep's tasks through one or more sources.

The loop: start due health checks, hand free slots the next tasks, start a poll of each
source whose jobs changed (or whose interval passed), then sleep until something wakes
it.  Submissions, polls, collections and health checks each run as their own task, so
a slow or hung source never holds up the others.  Every decision is written to the
ledger *before* it acts (the intent to submit is committed before ``submit_job``), so a
controller that dies at any instant can be followed by one that re-adopts what runs
and starts only what never started.

Failover: a source disabled by the monitor (or by the user) has its running attempts
marked LOST and their tasks queued again elsewhere; the attempts are kept as *orphans*.
If an orphan turns up later having completed first, its result becomes the task's and
the newer attempt is cancelled; if it completes second it is recorded as a surplus run.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import time
from typing import Optional, Sequence

from . import dispatch
from .control import ControlMixin
from .errors import ConfigError, ConnectError, SourceError
from .events import EventBus
from .job import JobTemplate
from .monitor import Health, HealthMonitor
from .retry import RetryPolicy
from .source import ComputeSource, to_state
from .state import JobOutcome, JobState
from .store import SweepStore

log = logging.getLogger(__name__)

_QUEUE_CHUNK = 1000
_LOOKAHEAD = 1000  # queued tasks examined per fill when requirements hold some back
Key = tuple[str, str]  # (source name, job id)


class DistributedJobManager(ControlMixin):
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
        retry: RetryPolicy = RetryPolicy(),
        health_interval: float = 30.0,
        max_failures: int = 3,
        health_timeout: float = 20.0,
        events: Optional[EventBus] = None,
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
        self.wandb_group, self.poll_interval, self.strategy, self.retry = wandb_group, poll_interval, strategy, retry
        self.events = events or EventBus()
        self.monitor = HealthMonitor(health_interval, max_failures, health_timeout, self._on_disable, self._on_enable)
        self._active: dict[Key, tuple[str, int]] = {}
        self._orphans: set[Key] = set()
        self._queue: collections.deque = collections.deque()
        self._cursor, self._exhausted = -1, False
        self._reserved: collections.Counter = collections.Counter()
        self._turn = 0
        self._tasks: set[asyncio.Task] = set()  # submissions, collections, cancels in flight
        self._polling: dict[str, asyncio.Task] = {}
        self._collecting: dict[str, asyncio.Task] = {}
        self._uncollected: dict[str, dict[str, JobState]] = collections.defaultdict(dict)
        self._dirty: set[str] = set()
        self._details: dict[Key, Optional[str]] = {}
        self._cancel_requested: set[str] = set()
        # when the earliest backoff ends: kept here so the loop never scans the ledger for it
        self._next_retry: Optional[float] = None
        self._last_poll: dict[str, float] = {}
        self._closed: dict[str, str] = {}  # name -> why it takes no new work (user: drain/disable)
        self._not_set_up: set[str] = set()
        self._done_times: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=500))
        self._wake: asyncio.Event | None = None
        self._recovered = asyncio.Event()  # set once in-flight jobs are re-adopted (or run() failed)
        self.running = False

    # -- the main loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the sweep until no task is waiting or running (re-adopting what a previous controller left)."""
        self._wake = asyncio.Event()
        self.running = True
        self.store.on_event = self.events.publish
        try:
            await self._setup_all()
            await self._recover()
            self._next_retry = self.store.next_retry()
            self._recovered.set()
            while True:
                self.monitor.tick(self.sources)
                self._fill()
                self._start_polls()
                if self._finished():
                    break
                try:
                    await asyncio.wait_for(self._wake.wait(), self._timeout())
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
            await self._settle_orphans()
        finally:
            self.running = False
            self._recovered.set()
            self.monitor.cancel()
            for task in [*self._polling.values(), *self._collecting.values(), *self._tasks]:
                task.cancel()
            for source in self.sources.values():
                try:
                    await source.cleanup()
                except Exception as exc:  # noqa: BLE001 - a user's source must not mask the real outcome
                    log.warning("cleanup of %s failed: %s", source.name, exc)
            self.store.on_event = None
            self.events.publish(None)

    def _timeout(self) -> float:
        timeout = self.poll_interval
        if self._next_retry is not None:
            timeout = min(timeout, max(0.01, self._next_retry - time.time()))
        return max(0.01, min([timeout, *(s.poll_interval for s in self.sources.values() if s.active_jobs)]))

    def notify(self, source: Optional[str] = None) -> None:
        """Wake the loop; with a source name, that source is polled at once."""
        if source is not None:
            self._dirty.add(source)
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: (self._tasks.discard(t), self.notify()))
        return task

    def _finished(self) -> bool:
        if self._tasks or self._collecting or any(self._uncollected.values()):
            return False
        if any(key not in self._orphans for key in self._active):
            return False
        return not self._has_pending() and self._next_retry is None

    # -- setup and recovery -------------------------------------------------------------
    async def _setup(self, source: ComputeSource) -> None:
        source.bind(self.template, self.store.directory, self.sweep_id, lambda n=source.name: self.notify(n))
        try:
            ok = await source.setup(self.store.directory, self.sweep_id)
        except SourceError:
            raise
        except Exception as exc:  # noqa: BLE001 - name the source in whatever it raised
            raise SourceError(f"setup failed: {exc}", source.name) from exc
        if ok is False:
            raise SourceError("setup() returned False; check the source's health_check()", source.name)

    async def _setup_all(self) -> None:
        results = await asyncio.gather(*(self._setup(s) for s in self.sources.values()), return_exceptions=True)
        errors = {s.name: r for s, r in zip(self.sources.values(), results) if isinstance(r, BaseException)}
        if len(errors) == len(self.sources):
            raise next(iter(errors.values()))
        for name, exc in errors.items():  # the others carry the sweep; this one may come back
            log.warning("source %s is disabled: %s", name, exc)
            self._not_set_up.add(name)
            h = self.monitor.health.setdefault(name, Health())
            h.enabled, h.status, h.reason = False, "unhealthy", str(exc)
            self.sources[name].stats.health_status = "unhealthy"
        for source in self.sources.values():
            self.monitor.watch(source)

    async def _recover(self) -> None:
        """Re-adopt attempts that a previous controller left in flight."""
        for row in self.store.in_flight():
            tid, attempt, job_id = row["task_id"], row["attempt"], row["job_id"]
            source = self.sources.get(row["source"])
            if source is None:
                raise ConfigError(
                    f"task {tid} is in flight on source {row['source']!r}, which was not given; "
                    f"pass that source too (given: {list(self.sources)})", "sources")
            if row["source"] in self._not_set_up:
                self._fail_over(tid, attempt, f"its source {source.name} is unavailable")
                continue
            if job_id is None:  # the controller died between intent and submission
                job_id = await source.recover_job(row["job_name"])
                if job_id is None:
                    self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error="controller stopped before the job started"))
                    self.store.requeue(tid, "queued again: it never started")
                    continue
                self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id, detail="re-adopted")
            source.track(job_id, row["job_name"], json.loads(row["params"]), source.job_dir(row["job_name"]))
            self._active[(source.name, job_id)] = (tid, attempt)

    # -- dispatch ----------------------------------------------------------------------
    def _has_pending(self) -> bool:
        if not self._queue and not self._exhausted:
            rows = self.store.pending(_QUEUE_CHUNK, self._cursor)
            self._queue.extend((r["task_id"], r["params"], r["requires"]) for r in rows)
            if rows:
                self._cursor = rows[-1]["idx"]
            else:
                self._exhausted = True
        if not self._queue and self._exhausted and self._next_retry is not None and self._next_retry <= time.time():
            self._next_retry = self.store.next_retry()  # the ledger's answer, asked only when one falls due
            if self._next_retry is not None and self._next_retry <= time.time():
                self.requeue()
                return self._has_pending()
        return bool(self._queue)

    def requeue(self) -> None:
        """Tasks were put back to PENDING in the ledger: read the queue again from the start."""
        self._queue.clear()
        self._cursor, self._exhausted = -1, False
        self._next_retry = self.store.next_retry()
        self.notify()

    def _closed_sources(self) -> set[str]:
        return self.monitor.disabled() | set(self._closed)

    def _fill(self) -> None:
        sources = list(self.sources.values())
        closed = self._closed_sources()
        deferred = []
        while self._has_pending() and len(deferred) < _LOOKAHEAD:
            if dispatch.choose(sources, self._reserved, "least_loaded", 0, None, closed) is None:
                break  # every source is full (or closed)
            item = self._queue.popleft()
            requires = json.loads(item[2]) if item[2] else None
            source = dispatch.choose(sources, self._reserved, self.strategy, self._turn, requires, closed)
            if source is None:
                if not any(dispatch.meets(s, requires) for s in sources):
                    self.store.finish_unrunnable(item[0], f"no source can run it: it needs {requires}; "
                                                          f"sources: {[s.name for s in sources]}")
                else:
                    deferred.append(item)
                continue
            self._turn += 1
            self._reserved[source.name] += 1
            self._spawn(self._submit(source, item[0], item[1]))
        self._queue.extendleft(reversed(deferred))

    async def _submit(self, source: ComputeSource, tid: str, params_json: str) -> None:
        params = json.loads(params_json)
        try:
            began = self.store.begin_attempt(tid, source.name)
            if began is None:
                return  # no longer pending: an earlier attempt won, or it was cancelled
            attempt, job_name = began
            self._cancel_requested.discard(tid)
            try:
                job_id = await source.submit_job(params, job_name, self.sweep_id, self.wandb_group)
            except ConnectError as exc:  # the source is unreachable: the task waits for another chance
                source.stats.health_status = "unhealthy"
                self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=f"{source.name} unreachable: {exc}"))
                self.store.requeue(tid, f"queued again: {source.name} was unreachable")
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

    # -- polling and collection ------------------------------------------------------------
    def _start_polls(self) -> None:
        now = time.monotonic()
        closed = self.monitor.disabled()
        for name, source in self.sources.items():
            if name in self._polling or name in closed or not (source.active_jobs or self._uncollected[name]):
                continue
            if name in self._dirty or now - self._last_poll.get(name, 0.0) >= min(self.poll_interval, source.poll_interval):
                self._dirty.discard(name)
                self._last_poll[name] = now
                task = asyncio.get_running_loop().create_task(self._poll_source(source))
                self._polling[name] = task
                task.add_done_callback(lambda t, n=name: (self._polling.pop(n, None), self.notify()))

    async def _poll_source(self, source: ComputeSource) -> None:
        try:
            states = await source.poll(list(source.active_jobs))
        except Exception as exc:  # noqa: BLE001 - a failed poll is retried next round
            log.warning("polling %s failed: %s", source.name, exc)
            states = {}
        finished: dict[str, JobState] = {}
        with self.store.transaction():
            for job_id, raw in states.items():
                key = (source.name, job_id)
                if key not in self._active or job_id not in source.active_jobs:
                    continue
                state = to_state(raw)
                tid, attempt = self._active[key]
                if state.is_terminal:
                    finished[job_id] = state
                    source.update_job_status(job_id, state)  # its slot is free from now on
                else:
                    detail = source.job_detail(job_id)
                    if source.active_jobs[job_id].status != state or detail != self._details.get(key):
                        self._details[key] = detail
                        self.store.set_state(tid, attempt, state, detail=detail)
                        source.update_job_status(job_id, state)
                if key in self._orphans and not state.is_terminal and self.store.task_state(tid) == JobState.COMPLETED:
                    self._spawn(source.cancel_job(job_id))  # a surplus run: the task has its result
        self._uncollected[source.name].update(finished)
        todo = self._uncollected[source.name]
        if todo and source.name not in self._collecting:
            batch = dict(todo)
            todo.clear()
            task = asyncio.get_running_loop().create_task(self._collect(source, batch))
            self._collecting[source.name] = task

    async def _collect(self, source: ComputeSource, finished: dict[str, JobState]) -> None:
        """Bring finished jobs' files home and record their outcomes, off the dispatch path."""
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
                    self._record(source, job_id, outcome)
        finally:
            del self._collecting[source.name]
            self.notify()

    def _record(self, source: ComputeSource, job_id: str, outcome: JobOutcome) -> None:
        key = (source.name, job_id)
        tid, attempt = self._active.pop(key)
        if tid in self._cancel_requested and outcome.state in (JobState.LOST, JobState.FAILED):
            outcome = dataclasses.replace(outcome, state=JobState.CANCELLED)  # what the user asked for: no retry
        self._orphans.discard(key)
        meaning = self.store.finish(tid, attempt, outcome)
        if outcome.state == JobState.COMPLETED:
            self._done_times[source.name].append(time.time())
        if meaning == "won":  # an earlier attempt came back first: stop the newer ones
            for other, (t, a) in list(self._active.items()):
                if t == tid and other != key:
                    self._spawn(self.sources[other[0]].cancel_job(other[1]))
        elif meaning == "current" and outcome.state in (JobState.LOST, JobState.FAILED):
            delay = self.retry.delay(outcome.state, attempt)
            if delay is not None:
                due = time.time() + delay
                self.store.requeue(tid, f"retry {attempt + 1}/{self.retry.max_attempts} in {delay:.0f} s after "
                                        f"{outcome.state.value}", due)
                self._next_retry = due if self._next_retry is None else min(self._next_retry, due)

    # -- failover and health ---------------------------------------------------------------
    def _fail_over(self, tid: str, attempt: int, why: str) -> None:
        meaning = self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=why))
        # only the task's live attempt sends it back to the queue: a task that already has its
        # result (an earlier attempt won) must never run again
        if meaning == "current" and self.retry.delay(JobState.LOST, attempt) is not None:
            self.store.requeue(tid, f"queued again: {why}")
        self.requeue()

    async def _on_disable(self, source: ComputeSource, reason: str) -> None:
        log.warning("source %s disabled: %s", source.name, reason)
        with self.store.transaction():
            for key, (tid, attempt) in list(self._active.items()):
                if key[0] == source.name and key not in self._orphans:
                    self._orphans.add(key)
                    self._fail_over(tid, attempt, f"source {source.name} disabled: {reason}")

    async def _on_enable(self, source: ComputeSource) -> None:
        if source.name in self._not_set_up:
            try:
                await self._setup(source)
            except Exception as exc:  # noqa: BLE001 - still unusable: keep it disabled
                h = self.monitor.health[source.name]
                h.enabled, h.status, h.reason = False, "unhealthy", str(exc)
                return
            self._not_set_up.discard(source.name)
        log.info("source %s enabled again", source.name)
        self.notify(source.name)

    async def _settle_orphans(self) -> None:
        """At the end: cancel orphans still running on reachable sources (their tasks are done)."""
        closed = self.monitor.disabled()
        jobs = [(self.sources[s], j) for (s, j) in self._orphans if s not in closed]
        await asyncio.gather(*(src.cancel_job(j) for src, j in jobs), return_exceptions=True)
