"""``DistributedJobManager``: drives one sweep's tasks through one or more sources.

The loop: start due health checks, hand free slots the next tasks, start a poll of each
source whose jobs changed (or whose interval passed), then sleep until something wakes
it.  Submissions, polls, collections and health checks each run as their own task, so
a slow or hung source never holds up the others.  Every decision is written to the
ledger *before* it acts (the intent to submit is committed before ``submit_job``), so a
controller that dies at any instant can be followed by one that re-adopts what runs
and starts only what never started.

One owner of run state: ``self.run`` (``core.runstate.RunState``; the ledger holds the durable
copy) says which attempts are out on which source, with their job names, slots, submissions in
flight, ended-not-collected, cancels and throughput; a source only answers questions about job
ids (and reads job names through a read-only view).  One owner of eligibility: ``self.gates``;
of health: the monitor.  The manager composes small parts that receive the run state and declare
what they use: ``Supervisor`` (every task it starts), ``Dispatcher`` (queue, dispatch,
submission), ``Poller`` (polling, collection, outcomes), ``Retries`` and ``Control`` (what users
do to a running sweep); it keeps the loop, setup, recovery and failover.

Failover: a source disabled by the monitor (or by the user) has its running attempts
marked LOST and their tasks queued again elsewhere; the attempts are kept as *orphans*.
If an orphan turns up later having completed first, its result becomes the task's and
the newer attempt is cancelled; if it completes second it is recorded as a surplus run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..base.source import ComputeSource
from ..ledger import steps
from ..ledger.events import EventBus
from ..ledger.store import SweepStore
from ..model.errors import ConfigError, HsmError, SourceError, describe_error, shorten
from ..model.state import JobOutcome, JobState, SourceHealth
from ..spec.job import JobTemplate
from ..spec.policy import RetryPolicy
from . import dispatch
from .control import CANCEL_WAIT, Control
from .gate import By, Faults, Gate, Mode, log
from .monitor import Health, HealthMonitor
from .polling import Poller
from .retry import Retries
from .runstate import Key, Live, RunState
from .submission import Dispatcher
from .supervisor import Supervisor
from .trials import Searcher, Trials

__all__ = ["DistributedJobManager", "Key", "Live", "CANCEL_WAIT"]

_SNAPSHOT_WAIT = 10.0  # seconds a thread waits for the loop to take a sources_status() snapshot


class DistributedJobManager:
    """Fans a sweep across ``sources``.  Create it, then ``await run()``."""

    def __init__(
        self,
        sources: Sequence[ComputeSource],
        store: SweepStore,
        template: JobTemplate,
        sweep_id: str,
        *,
        wandb_group: str | None = None,
        poll_interval: float = 1.0,
        strategy: str = "least_loaded",
        retry: RetryPolicy | None = None,
        health_interval: float = 30.0,
        max_failures: int = 3,
        health_timeout: float = 20.0,
        unknown_timeout: float = 120.0,
        stall_timeout: float = 600.0,
        events: EventBus | None = None,
        searcher: Searcher | None = None,
        search: Mapping[str, Any] | None = None,
        objective: Mapping[str, str] | None = None,
    ) -> None:
        """``searcher`` (with the search's budget ``search`` and its ``objective``) makes the sweep a
        search: trials are asked for as slots free (``core.engine.trials``)."""
        if not sources:
            raise ConfigError("give at least one compute source", "sources")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names must be unique, got {names}", "sources")
        if strategy not in dispatch.STRATEGIES:
            raise ConfigError(f"must be one of {dispatch.STRATEGIES}, got {strategy!r}", "strategy")
        self.sources: dict[str, ComputeSource] = {s.name: s for s in sources}
        self.store, self.template, self.sweep_id = store, template, sweep_id
        self.poll_interval, self.max_failures = poll_interval, max_failures
        self.events = events or EventBus()
        self.gates: dict[str, Gate] = {name: Gate() for name in self.sources}
        self.faults = Faults()
        self.run_state = RunState()
        self.retries = Retries(retry or RetryPolicy(), store, self.run_state)
        self.supervisor = Supervisor(self.run_state, store, self.gates, self.faults, max_failures=max_failures,
                                     stall_timeout=stall_timeout, checks=lambda: self.monitor.checking(),
                                     notify=self.notify, disable=self._disable,
                                     pending=lambda: self.dispatcher.waiting())
        self.monitor = HealthMonitor(health_interval, health_timeout, self.supervisor.spawn, self._on_health)
        self.poller = Poller(self.run_state, store, self.sources, self.gates, self.faults, self.supervisor,
                             self.retries, unknown_timeout=unknown_timeout, max_failures=max_failures,
                             interval=self.interval, notify=self.notify)
        self.dispatcher = Dispatcher(self.run_state, store, self.sources, self.gates, self.faults, self.supervisor,
                                     self.poller, self.retries, strategy=strategy, sweep_id=sweep_id,
                                     wandb_group=wandb_group, notify=self.notify)
        self.trials: Trials | None = None
        if searcher is not None:
            self.trials = Trials(searcher, store, self.run_state, objective or {}, search or {},
                                 stop_job=self._stop_task, notify=self.notify)
            self.dispatcher.trials = self.trials
            self.poller.on_steps = self.trials.steps
            self.poller.steps_probe = 0.0  # a pruner decides on curves: read them from the first poll
        self._recovered = asyncio.Event()  # set once in-flight jobs are re-adopted (or run() failed)
        self.control = Control(self.run_state, store, self.sources, self.gates, self.faults, self.monitor,
                               self.supervisor, self.dispatcher, self.poller, setup=self._setup,
                               disable=self._disable, validate=lambda s: s.validate(self.template),
                               notify=self.notify, running=lambda: self.running, recovered=self._recovered)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.running = False

    # -- what Sweep, the UI and tests read ------------------------------------------------
    @property
    def live(self) -> dict[Key, Live]:
        """The live attempts (``run_state.live``)."""
        return self.run_state.live

    @property
    def steps_stored(self) -> int:
        """Intermediate metric values recorded by this run (the panel's cue to redraw)."""
        return self.poller.steps_stored

    def load(self, name: str) -> int:
        """Slots of ``name`` in use: its live attempts plus submissions in flight."""
        return self.run_state.load(name)

    # -- the main loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Drive the sweep until no task is waiting or running (re-adopting what a previous
        controller left).  Raises what stopped it otherwise."""
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.running = True
        self.store.on_event = self.events.publish
        supervisor = self.supervisor
        try:
            await self._setup_all()
            await self._recover()
            if self.trials is not None:
                self.trials.recover()
            self.retries.reload()
            self._recovered.set()
            while True:
                supervisor.raise_if_stopped()
                if self.trials is not None:
                    self.trials.settle()
                self.monitor.tick(self.sources, {n for n, g in self.gates.items() if g.unreachable is not None})
                self.dispatcher.fill()
                self.poller.start_polls()
                if self._finished():
                    break
                supervisor.check_stall()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._timeout())
                except TimeoutError:
                    pass
                self._wake.clear()
            await self._settle_orphans()
            supervisor.raise_if_stopped()
            supervisor.check_all_ended()
            if self.trials is not None:
                self.trials.settle()
                if self.trials.failure is not None:
                    raise self.trials.failure
                self.trials.finish()
        except BaseException as exc:
            supervisor.fatal = supervisor.fatal or exc  # calls still waiting on this run (cancel) see it too
            raise
        finally:
            self.running = False
            self._recovered.set()
            self.monitor.cancel()
            supervisor.cancel_all()
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
        if self.retries.next_at is not None:
            timeout = min(timeout, max(0.01, self.retries.next_at - time.time()))
        busy = {key[0] for key in self.run_state.live}
        return max(0.01, min([timeout, *(self.interval(self.sources[n]) for n in busy)]))

    def interval(self, source: ComputeSource) -> float:
        """Seconds between polls of ``source``: its own ``poll_interval`` if it has one, else the sweep's."""
        return source.poll_interval if source.poll_interval is not None else self.poll_interval

    def notify(self, source: str | None = None) -> None:
        """Wake the loop; with a source name, that source is polled at once."""
        if source is not None:
            self.poller.dirty.add(source)
        if self._wake is not None:
            self._wake.set()

    def _finished(self) -> bool:
        run = self.run_state
        if self.supervisor.busy() or run.any_uncollected():
            return False
        if not run.only_orphans():
            return False
        return not self.dispatcher.open() and self.retries.next_at is None

    # -- setup and recovery -------------------------------------------------------------
    async def _setup(self, source: ComputeSource) -> None:
        source.bind(self.template, self.store.directory, self.sweep_id, functools.partial(self.notify, source.name),
                    names=self.run_state.names(source.name))
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
        pairs = zip(self.sources.values(), results, strict=True)
        errors = {s.name: r for s, r in pairs if isinstance(r, BaseException)}
        if len(errors) == len(self.sources):
            raise next(iter(errors.values()))
        for source in self.sources.values():
            self.monitor.watch(source)
        for name, exc in errors.items():  # the others carry the sweep; this one may come back
            log.warning("source %s is disabled: %s", name, exc)
            self.gates[name].close(Mode.DISABLED, By.SETUP, str(exc))
            self.monitor.setup_failed(self.sources[name], str(exc))

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
                    self.supervisor.fault(source, "recovering a job", exc)
                    self._fail_over(tid, attempt, f"{source.name} could not say whether it started: "
                                                  f"{describe_error(exc)}")
                    continue
                if job_id is None:
                    never = JobOutcome(JobState.LOST, error="controller stopped before the job started")
                    self.store.finish(tid, attempt, never)
                    self.store.requeue(tid, "queued again: it never started")
                    continue
                self.store.set_state(tid, attempt, JobState.QUEUED, job_id=job_id, detail="re-adopted")
            state = JobState(row["state"])
            self.run_state.add((source.name, job_id), Live(tid, attempt, job_name,
                                                            JobState.QUEUED if state == JobState.SUBMITTING else state))
            source.adopt(job_id, job_name)
            with self.store.transaction() as conn:
                steps.forget(conn, tid, attempt)

    def _stop_task(self, tid: str) -> None:
        """Stop a task's running attempts (a pruned trial); one not started yet is cancelled."""
        keys = [k for k in self.run_state.attempts_of(tid) if not self.run_state.live[k].orphan]
        for name, job_id in keys:
            self.poller.cancel(self.sources[name], job_id, "stopping a pruned trial")
        if not keys and tid not in self.run_state.submitting:
            self.store.cancel_pending([tid])
            self.dispatcher.drop({tid})

    # -- failover and health ---------------------------------------------------------------
    def _fail_over(self, tid: str, attempt: int, why: str) -> None:
        self.retries.fail_over(tid, attempt, why)
        self.dispatcher.requeue()

    def _disable(self, source: ComputeSource, by: By, reason: str) -> None:
        """Close ``source`` to new work and fail its running attempts over to the others."""
        log.warning("source %s disabled: %s", source.name, reason)
        self.gates[source.name].close(Mode.DISABLED, by, reason)
        with self.store.transaction():
            for (name, _), live in self.run_state.live.items():
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
        if h.status == SourceHealth.UNHEALTHY:
            if gate.mode in (Mode.ENABLED, Mode.DRAINING) and h.failures >= self.max_failures:
                self._disable(source, By.HEALTH, h.reason or "unhealthy")
            return
        self.supervisor.reached(source, proven=False)
        if gate.by == By.SETUP:
            try:
                await self._setup(source)
            except Exception as exc:  # noqa: BLE001 - still unusable: keep it closed, with the new reason
                gate.reason = describe_error(exc)
                self.monitor.setup_failed(source, gate.reason)
                return
        if gate.by in (By.HEALTH, By.SETUP):
            gate.open()
            log.info("source %s enabled again", source.name)
            self.notify(source.name)

    async def _settle_orphans(self) -> None:
        """At the end: cancel orphans still running on reachable sources (their tasks are done)."""
        jobs = [(self.sources[s], j) for (s, j), live in self.run_state.live.items()
                if live.orphan and self.gates[s].by not in (By.HEALTH, By.SETUP, By.FAULTS)]
        await asyncio.gather(*(src.cancel_job(j) for src, j in jobs), return_exceptions=True)

    # -- what users do (``Control``) -------------------------------------------------------
    def require_source(self, name: str) -> ComputeSource:
        """The source named ``name``, or ConfigError naming the sources (checked before a control call)."""
        return self.control.need(name)

    async def cancel(self, task_ids: Iterable[str] | None = None, source: str | None = None) -> int:
        return await self.control.cancel(task_ids, source)

    async def cancels_recorded(self, task_ids: Iterable[str] | None = None, timeout: float = CANCEL_WAIT) -> None:
        await self.control.cancels_recorded(task_ids, timeout)

    async def add_source(self, source: ComputeSource) -> None:
        await self.control.add_source(source)

    def drain(self, name: str) -> None:
        self.control.drain(name)

    async def disable(self, name: str) -> int:
        return await self.control.disable(name)

    def enable(self, name: str) -> None:
        self.control.enable(name)

    def requeue(self) -> None:
        """Tasks were put back to PENDING in the ledger: read the queue again from the start."""
        if self.trials is not None:
            self.trials.reopen()
        self.dispatcher.requeue()

    def source_stats(self) -> list[dict[str, Any]]:
        """One row per source: a snapshot taken on the loop thread (from another thread, the call
        waits for the loop to take it, so a row never mixes two moments)."""
        loop = self._loop
        if loop is None or not self.running or _on_loop(loop):
            return self.control.source_stats()
        future: concurrent.futures.Future[list[dict[str, Any]]] = concurrent.futures.Future()

        def take() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.control.source_stats())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)

        loop.call_soon_threadsafe(take)
        try:
            return future.result(_SNAPSHOT_WAIT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise HsmError(f"the sweep's loop did not answer within {_SNAPSHOT_WAIT:.0f} s for sources_status(); "
                           "it is busy or blocked: try again, or Sweep.attach(dir) from a fresh kernel") from None


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
