"""``DistributedJobManager``: drives one sweep's tasks through one or more sources.

The loop: start due health checks, hand free slots the next tasks, start a poll of each
source whose jobs changed (or whose interval passed), then sleep until something wakes
it.  Submissions, polls, collections and health checks each run as their own task, so
a slow or hung source never holds up the others.  Every decision is written to the
ledger *before* it acts (the intent to submit is committed before ``submit_job``), so a
controller that dies at any instant can be followed by one that re-adopts what runs
and starts only what never started.

One owner of run state: ``self.live`` (with the ledger as the truth) says which attempts
are out on which source; a source only answers questions about job ids.  One owner of
eligibility: ``self.gates``.  The manager is split by concern into mixins: polling and
collection of live attempts (``polling``), supervision of every task it starts
(``supervisor``), and what users do to a running sweep (``control``).

Failover: a source disabled by the monitor (or by the user) has its running attempts
marked LOST and their tasks queued again elsewhere; the attempts are kept as *orphans*.
If an orphan turns up later having completed first, its result becomes the task's and
the newer attempt is cancelled; if it completes second it is recorded as a surplus run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Optional, Sequence

from . import dispatch, steps
from .control import ControlMixin
from .errors import ConfigError, SourceError, describe_error, is_infrastructure, shorten
from .events import EventBus
from .gate import By, Faults, Gate, Mode, log
from .job import JobTemplate
from .monitor import Health, HealthMonitor
from .polling import Key, Live, PollingMixin
from .retry import RetryPolicy, unreachable
from .source import ComputeSource
from .state import JobOutcome, JobState
from .store import SweepStore
from .supervisor import SupervisorMixin

_QUEUE_CHUNK = 1000
_LOOKAHEAD = 1000  # queued tasks examined per fill when requirements hold some back


class DistributedJobManager(SupervisorMixin, PollingMixin, ControlMixin):
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
        unknown_timeout: float = 120.0,
        stall_timeout: float = 600.0,
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
        self.max_failures, self.unknown_timeout, self.stall_timeout = max_failures, unknown_timeout, stall_timeout
        self.events = events or EventBus()
        self.monitor = HealthMonitor(health_interval, health_timeout, self._spawn, self._on_health)
        self.gates: dict[str, Gate] = {name: Gate() for name in self.sources}
        self.faults = Faults()
        self.live: dict[Key, Live] = {}
        self._load: collections.Counter = collections.Counter()  # per source: live attempts not ended
        self.steps_stored = 0  # intermediate metric values recorded by this run (the panel's cue to redraw)
        self._steps_seen: set[str] = set()  # sources whose running jobs have logged steps
        self._steps_read_at: dict[str, float] = {}
        self._reserved: collections.Counter = collections.Counter()  # per source: submissions in flight
        self._submitting: dict[str, tuple[str, int]] = {}  # task id -> (source, attempt) while submit_job runs
        self._cancel: set[str] = set()  # tasks whose cancel was asked and is not done yet
        self._queue: collections.deque = collections.deque()
        self._cursor, self._exhausted = -1, False
        self._turn = 0
        self._tasks: set[asyncio.Task] = set()  # every task the manager started, supervised
        self._polling: dict[str, asyncio.Task] = {}
        self._collecting: dict[str, asyncio.Task] = {}
        self._uncollected: dict[str, dict[str, JobState]] = collections.defaultdict(dict)
        self._dirty: set[str] = set()
        # when the earliest backoff ends: kept here so the loop never scans the ledger for it
        self._next_retry: Optional[float] = None
        self._last_poll: dict[str, float] = {}
        self._last_collect: dict[str, float] = {}
        self._stalled_since: Optional[float] = None
        self._fatal: Optional[BaseException] = None
        self._done_times: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=500))
        self._wake: asyncio.Event | None = None
        self._recovered = asyncio.Event()  # set once in-flight jobs are re-adopted (or run() failed)
        self.running = False

    # -- the main loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the sweep until no task is waiting or running (re-adopting what a previous
        controller left).  Raises what stopped it otherwise."""
        self._wake = asyncio.Event()
        self.running = True
        self.store.on_event = self.events.publish
        try:
            await self._setup_all()
            await self._recover()
            self._next_retry = self.store.next_retry()
            self._recovered.set()
            while True:
                self._raise_if_stopped()
                self.monitor.tick(self.sources, {n for n, g in self.gates.items() if g.unreachable is not None})
                self._fill()
                self._start_polls()
                if self._finished():
                    break
                self._check_stall()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._timeout())
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
            await self._settle_orphans()
            self._raise_if_stopped()
            self._check_all_ended()
        except BaseException as exc:
            self._fatal = self._fatal or exc  # calls still waiting on this run (cancel) see it too
            raise
        finally:
            self.running = False
            self._recovered.set()
            self.monitor.cancel()
            for task in list(self._tasks):
                task.cancel()
            for source in self.sources.values():
                try:
                    await source.cleanup()
                except Exception as exc:  # noqa: BLE001 - a user's source must not mask the real outcome
                    self.faults.report(source.name, "cleanup", exc)
            for gate in self.gates.values():
                if gate.mode in (Mode.ENABLED, Mode.DRAINING):  # disabled ones keep their reason in view
                    gate.close(Mode.CLOSED, None, "the run ended")
            self.store.on_event = None
            self.events.publish(None)

    def _timeout(self) -> float:
        timeout = self.poll_interval
        if self._next_retry is not None:
            timeout = min(timeout, max(0.01, self._next_retry - time.time()))
        busy = {key[0] for key in self.live}
        return max(0.01, min([timeout, *(self.interval(self.sources[n]) for n in busy)]))

    def interval(self, source: ComputeSource) -> float:
        """Seconds between polls of ``source``: its own ``poll_interval`` if it has one, else the sweep's."""
        return source.poll_interval if source.poll_interval is not None else self.poll_interval

    def notify(self, source: Optional[str] = None) -> None:
        """Wake the loop; with a source name, that source is polled at once."""
        if source is not None:
            self._dirty.add(source)
        if self._wake is not None:
            self._wake.set()

    def _finished(self) -> bool:
        if self._busy() or any(self._uncollected.values()):
            return False
        if any(not live.orphan for live in self.live.values()):
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
            raise SourceError(f"setup failed: {shorten(str(exc) or type(exc).__name__)}", source.name) from exc
        if ok is False:
            raise SourceError("setup() returned False; check the source's health_check()", source.name)

    async def _setup_all(self) -> None:
        results = await asyncio.gather(*(self._setup(s) for s in self.sources.values()), return_exceptions=True)
        errors = {s.name: r for s, r in zip(self.sources.values(), results) if isinstance(r, BaseException)}
        if len(errors) == len(self.sources):
            raise next(iter(errors.values()))
        for name, exc in errors.items():  # the others carry the sweep; this one may come back
            log.warning("source %s is disabled: %s", name, exc)
            self.gates[name].close(Mode.DISABLED, By.SETUP, str(exc))
            self.sources[name].stats.health_status = "unhealthy"
        for source in self.sources.values():
            self.monitor.watch(source)

    async def _recover(self) -> None:
        """Re-adopt attempts that a previous controller left in flight."""
        for row in self.store.in_flight():
            tid, attempt, job_id, job_name = row["task_id"], row["attempt"], row["job_id"], row["job_name"]
            source = self.sources.get(row["source"])
            if source is None:
                raise ConfigError(
                    f"task {tid} is in flight on source {row['source']!r}, which was not given; "
                    f"pass that source too (given: {list(self.sources)})", "sources")
            if self.gates[source.name].by == By.SETUP:
                self._fail_over(tid, attempt, f"its source {source.name} is unavailable")
                continue
            if job_id is None:  # the controller died between intent and submission
                try:
                    job_id = await source.recover_job(job_name)
                except Exception as exc:  # noqa: BLE001 - cannot tell: the task waits for its source
                    self._fault(source, "recovering a job", exc)
                    self._fail_over(tid, attempt, f"{source.name} could not say whether it started: "
                                                  f"{describe_error(exc)}")
                    continue
                if job_id is None:
                    self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error="controller stopped before the job started"))
                    self.store.requeue(tid, "queued again: it never started")
                    continue
                self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id, detail="re-adopted")
            source.job_names[job_id] = job_name
            source.adopt(job_id, job_name)
            with self.store.transaction() as conn:
                steps.forget(conn, tid, attempt)
            state = JobState(row["state"])
            self._add_live((source.name, job_id), Live(tid, attempt, job_name,
                                                        JobState.QUEUED if state == JobState.SUBMITTING else state))

    def _add_live(self, key: Key, live: Live) -> None:
        self.live[key] = live
        self._load[key[0]] += 1

    def _end_live(self, key: Key, live: Live, state: JobState) -> None:
        """The source says the job ended: its slot is free from now on."""
        if live.ended is None:
            live.ended = state
            self._load[key[0]] -= 1

    def load(self, name: str) -> int:
        """Slots of ``name`` in use: its live attempts plus submissions in flight."""
        return self._load[name] + self._reserved[name]

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

    def _open(self) -> list[ComputeSource]:
        return [s for name, s in self.sources.items() if self.gates[name].takes_work]

    def _fill(self) -> None:
        sources = list(self.sources.values())
        open_ = self._open()
        deferred = []
        while self._has_pending() and len(deferred) < _LOOKAHEAD:
            if dispatch.choose(open_, self.load, "least_loaded", 0, None) is None:
                break  # every open source is full (or none is open)
            item = self._queue.popleft()
            requires = json.loads(item[2]) if item[2] else None
            source = dispatch.choose(open_, self.load, self.strategy, self._turn, requires)
            if source is None:
                if not any(dispatch.meets(s, requires) for s in sources):
                    self.store.finish_unrunnable(item[0], f"no source can run it: it needs {requires}; "
                                                          f"sources: {[s.name for s in sources]}")
                else:
                    deferred.append(item)
                continue
            self._turn += 1
            self._reserved[source.name] += 1
            self._spawn(self._submit(source, item[0], item[1]), None, f"submitting to {source.name}")
        self._queue.extendleft(reversed(deferred))

    async def _submit(self, source: ComputeSource, tid: str, params_json: str) -> None:
        params = json.loads(params_json)
        try:
            began = self.store.begin_attempt(tid, source.name)
            if began is None:
                return  # no longer pending: an earlier attempt won, or it was cancelled
            attempt, job_name = began
            self._submitting[tid] = (source.name, attempt)
            try:
                job_id = await source.submit_job(params, job_name, self.sweep_id, self.wandb_group)
                if not isinstance(job_id, str) or not job_id:
                    raise SourceError(f"submit_job() returned {job_id!r}; it must return the job's id (a string)",
                                      source.name)
            except Exception as exc:  # noqa: BLE001 - every failure of a submission is the task's, in words
                self._submitting.pop(tid, None)
                self._submit_failed(source, tid, attempt, exc)
                return
            self._submitting.pop(tid, None)
            self.faults.ok(source.name, "submitting")
            self.gates[source.name].unreachable_since = None
            source.job_names[job_id] = job_name
            self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id)
            self._add_live((source.name, job_id), Live(tid, attempt, job_name))
            if tid in self._cancel:  # cancelled while the submission was in flight: stop it now
                self._spawn(self._cancel_one(source, job_id), source, "cancelling")
        finally:
            self._reserved[source.name] -= 1

    def _submit_failed(self, source: ComputeSource, tid: str, attempt: int, exc: BaseException) -> None:
        """A submission failed: infrastructure faults are LOST (retried by the policy, with
        backoff), anything else FAILED; a cancelled task is CANCELLED.  Errors stay short."""
        self._fault(source, "submitting", exc)
        why = describe_error(exc)
        if tid not in self._cancel and unreachable(exc):  # the source's fault, not the task's: it waits
            self._wait_for(source, why)
            if self.store.withdraw(tid, attempt, f"waiting for {source.name} to be reachable again: {why}"):
                self.requeue()
                return
        if tid in self._cancel:
            outcome = JobOutcome(JobState.CANCELLED, error=f"cancelled while it was being submitted ({why})")
        elif is_infrastructure(exc):
            outcome = JobOutcome(JobState.LOST, error=f"could not be submitted to {source.name}: {why}")
        else:
            outcome = JobOutcome(JobState.FAILED, error=f"submission to {source.name} failed: {why}")
        self._conclude(tid, attempt, outcome, self.store.finish(tid, attempt, outcome))

    # -- failover and health ---------------------------------------------------------------
    def _fail_over(self, tid: str, attempt: int, why: str) -> None:
        meaning = self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=why))
        # only the task's live attempt sends it back to the queue: a task that already has its
        # result (an earlier attempt won) must never run again
        if meaning == "current" and tid not in self._cancel and self.retry.delay(JobState.LOST, attempt) is not None:
            self.store.requeue(tid, f"queued again: {why}")
        self.requeue()

    def _disable(self, source: ComputeSource, by: By, reason: str) -> None:
        """Close ``source`` to new work and fail its running attempts over to the others."""
        log.warning("source %s disabled: %s", source.name, reason)
        self.gates[source.name].close(Mode.DISABLED, by, reason)
        with self.store.transaction():
            for (name, _), live in self.live.items():
                if name == source.name and not live.orphan and live.ended is None:
                    live.orphan = True
                    self._fail_over(live.tid, live.attempt, f"source {source.name} disabled: {reason}")
        self.notify()

    async def _on_health(self, source: ComputeSource, h: Health) -> None:
        """The monitor's report: disable after ``max_failures`` unhealthy checks in a row; a healthy
        check opens a source that health (or a failed setup) had closed."""
        gate = self.gates.get(source.name)
        if gate is None:
            return
        if h.status != "unhealthy":
            self._reached(source, proven=False)
        if h.status == "unhealthy":
            if gate.mode in (Mode.ENABLED, Mode.DRAINING) and h.failures >= self.max_failures:
                self._disable(source, By.HEALTH, h.reason or "unhealthy")
            return
        if gate.by == By.SETUP:
            try:
                await self._setup(source)
            except Exception as exc:  # noqa: BLE001 - still unusable: keep it closed, with the new reason
                gate.reason = describe_error(exc)
                return
        if gate.by in (By.HEALTH, By.SETUP):
            gate.open()
            log.info("source %s enabled again", source.name)
            self.notify(source.name)

    async def _settle_orphans(self) -> None:
        """At the end: cancel orphans still running on reachable sources (their tasks are done)."""
        jobs = [(self.sources[s], j) for (s, j), live in self.live.items()
                if live.orphan and self.gates[s].by not in (By.HEALTH, By.SETUP, By.FAULTS)]
        await asyncio.gather(*(src.cancel_job(j) for src, j in jobs), return_exceptions=True)
