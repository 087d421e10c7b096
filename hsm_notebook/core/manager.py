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
eligibility: ``self.gates``.  Supervision: every task the manager starts goes through
``_spawn``; when one fails, the failure is either a source's (counted in ``faults``; a
source that keeps raising is disabled with the reason) or the sweep's (a ledger that
cannot be written, a bug): the run stops and ``wait()`` raises it.

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
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from . import dispatch
from .control import ControlMixin
from .errors import ConfigError, HsmError, SourceError, StoreError, describe_error, is_infrastructure, shorten
from .events import EventBus
from .gate import By, Faults, Gate, Mode, log
from .job import JobTemplate
from .monitor import Health, HealthMonitor
from .retry import RetryPolicy
from .source import ComputeSource, reported_state
from .state import JobOutcome, JobState
from .store import SweepStore

_QUEUE_CHUNK = 1000
_LOOKAHEAD = 1000  # queued tasks examined per fill when requirements hold some back
Key = tuple[str, str]  # (source name, job id)


@dataclass
class Live:
    """One attempt out on a source, from its submission until its end is recorded."""

    tid: str
    attempt: int
    job_name: str
    state: JobState = JobState.QUEUED
    detail: Optional[str] = None
    orphan: bool = False  # failed over: its task was queued again elsewhere
    ended: Optional[JobState] = None  # the source said it ended; its files are being collected
    unknown_since: Optional[float] = None  # first round without a usable answer, in a row
    unknown_why: Optional[str] = None


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
                self.monitor.tick(self.sources)
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
        return max(0.01, min([timeout, *(self.sources[n].poll_interval for n in busy)]))

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

    # -- supervision -----------------------------------------------------------------------
    def _spawn(self, coro, source: Optional[ComputeSource], what: str) -> asyncio.Task:
        """Start ``coro`` as a supervised task: if it fails, the failure is ``source``'s (counted,
        and a source that keeps failing is disabled) or, with no source or for a ledger
        error, the sweep's (the run stops and says why)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._reap(t, source, what))
        return task

    def _reap(self, task: asyncio.Task, source: Optional[ComputeSource], what: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if source is None or isinstance(exc, (StoreError, sqlite3.Error)):
                self._stop(exc, what)
            else:
                self._fault(source, what, exc)
        self.notify()

    def _stop(self, exc: BaseException, what: str) -> None:
        """The sweep cannot go on: remember why; the loop raises it."""
        if self._fatal is None:
            if isinstance(exc, HsmError):
                self._fatal = exc
            else:
                self._fatal = HsmError(f"the sweep stopped: {what} failed with {describe_error(exc)} "
                                       "(a bug: please report it); Sweep.attach(dir) carries on from here")
                self._fatal.__cause__ = exc
        self.notify()

    def _raise_if_stopped(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _fault(self, source: ComputeSource, what: str, exc: BaseException) -> int:
        """A source's operation failed.  Faults of the machine or network are only counted
        (health checks decide about those); any other kind, ``max_failures`` times in a row,
        disables the source."""
        streak = self.faults.report(source.name, what, exc)
        gate = self.gates.get(source.name)
        if gate is not None and not is_infrastructure(exc) and streak >= self.max_failures and gate.by != By.FAULTS:
            self._spawn(self._disable(source, By.FAULTS, f"{what} failed {streak} times in a row: "
                                      f"{describe_error(exc, 200)}; fix the source, then enable({source.name!r})"),
                        None, f"disabling {source.name}")
        return streak

    def _check_stall(self) -> None:
        """Work is due and nothing runs or is being started: no open source can take it (all are
        closed, or the open ones do not meet the tasks' requirements).  Stop with the reasons
        rather than hang: at once if no source may open again, else after ``stall_timeout``."""
        waiting = self._has_pending() and all(live.orphan for live in self.live.values()) and not self._busy()
        if not waiting:
            self._stalled_since = None
            return
        reasons = "; ".join(f"{n}: {g.describe()}{' - ' + g.reason if g.reason else ''}" for n, g in self.gates.items())
        what = f"{self.store.counts().get(JobState.PENDING.value, 0)} task(s) wait and no open source can run them"
        now = time.monotonic()
        self._stalled_since = self._stalled_since or now
        if not any(g.may_open for g in self.gates.values()):
            raise HsmError(f"no source can take the remaining tasks: {what} ({reasons}); fix them and "
                           "Sweep.attach(dir) (or complete()) to finish the sweep")
        if now - self._stalled_since > self.stall_timeout:
            raise HsmError(f"no source has taken the remaining tasks for {self.stall_timeout:.0f} s: {what} "
                           f"({reasons}); the sweep stopped with tasks pending: Sweep.attach(dir) (or complete()) "
                           "finishes it once a source can run them")

    def _check_all_ended(self) -> None:
        left = {s: n for s, n in self.store.counts().items() if not JobState(s).is_terminal}
        if left:
            raise HsmError(f"the manager ended with tasks unfinished ({left}): a bug, please report it; "
                           "Sweep.attach(dir) finishes them")

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

    def _busy(self) -> bool:
        """Work of the manager's own in flight (health checks do not count)."""
        return bool(self._tasks.difference(self.monitor.checking()))

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
        if tid in self._cancel:
            outcome = JobOutcome(JobState.CANCELLED, error=f"cancelled while it was being submitted ({why})")
        elif is_infrastructure(exc):
            outcome = JobOutcome(JobState.LOST, error=f"could not be submitted to {source.name}: {why}")
        else:
            outcome = JobOutcome(JobState.FAILED, error=f"submission to {source.name} failed: {why}")
        self._conclude(tid, attempt, outcome, self.store.finish(tid, attempt, outcome))

    # -- polling and collection ------------------------------------------------------------
    def _start_polls(self) -> None:
        now = time.monotonic()
        busy = collections.defaultdict(bool)
        for (name, _), live in self.live.items():
            busy[name] = busy[name] or live.ended is None
        for name, source in self.sources.items():
            if name in self._polling or not self.gates[name].reachable:
                continue
            if not busy[name] and not self._uncollected[name]:
                continue
            if name in self._dirty or now - self._last_poll.get(name, 0.0) >= min(self.poll_interval, source.poll_interval):
                self._dirty.discard(name)
                self._last_poll[name] = now
                task = self._spawn(self._poll_source(source), None, f"polling {name}")
                self._polling[name] = task
                task.add_done_callback(lambda t, n=name: self._polling.pop(n, None))

    async def _poll_source(self, source: ComputeSource) -> None:
        ids = [job_id for (name, job_id), live in self.live.items() if name == source.name and live.ended is None]
        answers: dict[str, Any] = {}
        if ids:
            try:
                answers = await source.poll(ids)
                if not isinstance(answers, dict):
                    raise SourceError(f"poll() returned {type(answers).__name__}; it must return {{job id: state}}",
                                      source.name)
            except Exception as exc:  # noqa: BLE001 - counted against the source; asked again next round
                self._fault(source, "polling", exc)
                answers = None
        if answers is not None:
            self.faults.ok(source.name, "polling")
            with self.store.transaction():
                for job_id in ids:
                    self._read_answer(source, job_id, answers.get(job_id))
        todo = self._uncollected[source.name]
        if todo and source.name not in self._collecting:
            batch = dict(todo)
            todo.clear()
            task = self._spawn(self._collect(source, batch), None, f"collecting from {source.name}")
            self._collecting[source.name] = task
            task.add_done_callback(lambda t, n=source.name: self._collecting.pop(n, None))

    def _read_answer(self, source: ComputeSource, job_id: str, answer: Any) -> None:
        """One job's answer in a poll: a state, or no usable answer (asked again; LOST only after
        ``unknown_timeout`` of rounds without one)."""
        key = (source.name, job_id)
        live = self.live.get(key)
        if live is None or live.ended is not None:
            return
        if isinstance(answer, BaseException):
            state, why = None, describe_error(answer, 200)
            self.faults.report(source.name, "reading a job's state", answer)
        else:
            state = reported_state(answer) if answer is not None else None
            why = "no answer for it" if answer is None else f"answered {answer!r}"
        if state is None:
            now = time.monotonic()
            live.unknown_since, live.unknown_why = live.unknown_since or now, why
            if now - live.unknown_since < self.unknown_timeout:
                return
            state = JobState.LOST
        else:
            live.unknown_since = None
        if state.is_terminal:
            self._end_live(key, live, state)
            self._uncollected[source.name][job_id] = state
        else:
            detail = source.job_detail(job_id)
            if state != live.state or detail != live.detail:
                live.state, live.detail = state, detail
                self.store.set_state(live.tid, live.attempt, state, detail=detail)
            if live.orphan and self.store.task_state(live.tid) == JobState.COMPLETED:
                self._spawn(self._cancel_one(source, job_id), source, "cancelling a surplus run")

    async def _collect(self, source: ComputeSource, finished: dict[str, JobState]) -> None:
        """Bring finished jobs' files home and record their outcomes, off the dispatch path."""
        note = None
        try:
            await source.collect_results(list(finished))
            self.faults.ok(source.name, "collecting results")
        except Exception as exc:  # noqa: BLE001 - tried again; after max_failures, recorded with the reason
            if self._fault(source, "collecting results", exc) < self.max_failures:
                self._uncollected[source.name].update(finished)
                return
            note = f"its files could not be brought back from {source.name}: {describe_error(exc, 200)}"
        outcomes = {job_id: await self._outcome(source, job_id, state, note) for job_id, state in finished.items()}
        with self.store.transaction():
            for job_id, outcome in outcomes.items():
                self._record(source, job_id, outcome)

    async def _outcome(self, source: ComputeSource, job_id: str, state: JobState, note: Optional[str]) -> JobOutcome:
        live = self.live.get((source.name, job_id))
        try:
            outcome = await source.outcome(job_id, state)
            if not isinstance(outcome, JobOutcome):
                raise SourceError(f"outcome() returned {type(outcome).__name__}, not a JobOutcome", source.name)
            reported = reported_state(outcome.state)
            if reported is None or not reported.is_terminal:
                raise SourceError(f"outcome() gave the state {outcome.state!r} for a finished job", source.name)
            outcome = dataclasses.replace(outcome, state=reported)
        except Exception as exc:  # noqa: BLE001 - the state is known; say why the rest is missing
            self.faults.report(source.name, "reading an outcome", exc)
            outcome = JobOutcome(state, error=f"its outcome could not be read: {describe_error(exc, 200)}")
        if live is not None and live.unknown_since is not None and outcome.state == JobState.LOST:
            note = f"{source.name} gave no usable state for {self.unknown_timeout:.0f} s (last: {live.unknown_why})"
        if note:
            outcome = dataclasses.replace(outcome, error="; ".join(filter(None, [outcome.error, note])))
        return outcome

    def _record(self, source: ComputeSource, job_id: str, outcome: JobOutcome) -> None:
        key = (source.name, job_id)
        live = self.live.pop(key)
        if live.ended is None:
            self._load[source.name] -= 1
        tid, attempt = live.tid, live.attempt
        if tid in self._cancel and outcome.state in (JobState.LOST, JobState.FAILED):
            outcome = dataclasses.replace(outcome, state=JobState.CANCELLED)  # what the user asked for: no retry
        meaning = self.store.finish(tid, attempt, outcome)
        if outcome.state == JobState.COMPLETED:
            self._done_times[source.name].append(time.time())
        source.update_job_status(job_id, outcome.state)  # the reference API's bookkeeping and stats
        if meaning == "won":  # an earlier attempt came back first: stop the newer ones
            for (s, j), other in list(self.live.items()):
                if other.tid == tid and (s, j) != key:
                    self._spawn(self._cancel_one(self.sources[s], j), self.sources[s], "cancelling a newer attempt")
        self._conclude(tid, attempt, outcome, meaning)

    def _conclude(self, tid: str, attempt: int, outcome: JobOutcome, meaning: str) -> None:
        """After an attempt's end is recorded: queue a retry if the policy wants one."""
        if meaning == "current" and outcome.state in (JobState.LOST, JobState.FAILED) and tid not in self._cancel:
            delay = self.retry.delay(outcome.state, attempt)
            if delay is not None:
                due = time.time() + delay
                self.store.requeue(tid, f"retry {attempt + 1}/{self.retry.max_attempts} in {delay:.0f} s after "
                                        f"{outcome.state.value}", due)
                self._next_retry = due if self._next_retry is None else min(self._next_retry, due)
                return
        if meaning in ("current", "won"):
            self._cancel.discard(tid)

    async def _cancel_one(self, source: ComputeSource, job_id: str) -> bool:
        result = await source.cancel_job(job_id)
        self.notify(source.name)
        return result is True

    # -- failover and health ---------------------------------------------------------------
    def _fail_over(self, tid: str, attempt: int, why: str) -> None:
        meaning = self.store.finish(tid, attempt, JobOutcome(JobState.LOST, error=why))
        # only the task's live attempt sends it back to the queue: a task that already has its
        # result (an earlier attempt won) must never run again
        if meaning == "current" and tid not in self._cancel and self.retry.delay(JobState.LOST, attempt) is not None:
            self.store.requeue(tid, f"queued again: {why}")
        self.requeue()

    async def _disable(self, source: ComputeSource, by: By, reason: str) -> None:
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
        if h.status == "unhealthy":
            if gate.mode in (Mode.ENABLED, Mode.DRAINING) and h.failures >= self.max_failures:
                await self._disable(source, By.HEALTH, h.reason or "unhealthy")
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
