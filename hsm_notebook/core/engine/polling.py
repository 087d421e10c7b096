"""Live attempts, from their answers to their recorded end: polling, collection, outcomes.

A poll asks a source about its live job ids only (the run state says which); an answer the engine
cannot read is asked again and turns LOST only after ``unknown_timeout``.  Finished jobs' files
come home off the dispatch path, and their outcomes are recorded in one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from ..base.source import ComputeSource, reported_state
from ..ledger import steps
from ..ledger.store import SweepStore
from ..model.errors import SourceError, describe_error
from ..model.state import JobOutcome, JobState
from ..spec import jobpaths
from .gate import Faults, Gate
from .retry import Retries
from .runstate import Key, Live, RunState
from .supervisor import Supervisor, untrack

__all__ = ["Key", "Live", "Poller", "cancel_one"]

_COLLECT_BATCH = 256  # finished jobs that are collected at once, whatever the time since the last batch
_STEPS_PROBE = 5.0  # seconds between looks for intermediate metrics on a source whose jobs have logged none yet


async def cancel_one(source: ComputeSource, job_id: str, notify: Callable[..., None]) -> bool:
    """Ask ``source`` to stop one job; poll it at once (its end is recorded by the next poll)."""
    result = await source.cancel_job(job_id)
    notify(source.name)
    return result is True


class Poller:
    """Uses: the run state (which attempts are live, ended, uncollected), the ledger, the sources and
    their gates (reachable?), faults, the supervisor (tasks, a source's faults, reachability), the
    retry decisions; ``interval`` (a source's poll interval) and ``notify`` from the engine."""

    def __init__(self, run: RunState, store: SweepStore, sources: dict[str, ComputeSource], gates: dict[str, Gate],
                 faults: Faults, supervisor: Supervisor, retries: Retries, *, unknown_timeout: float,
                 max_failures: int, interval: Callable[[ComputeSource], float], notify: Callable[..., None]) -> None:
        self.run, self.store, self.sources, self.gates, self.faults = run, store, sources, gates, faults
        self.supervisor, self.retries = supervisor, retries
        self.unknown_timeout, self.max_failures, self.interval, self.notify = (
            unknown_timeout, max_failures, interval, notify)
        self.dirty: set[str] = set()  # sources to poll at once (they signalled a change)
        #: told each poll's new intermediate values of running attempts (a search's pruner hears them)
        self.on_steps: Callable[[list[tuple[Live, list[steps.Row]]]], None] | None = None
        self.steps_stored = 0  # intermediate metric values recorded by this run (the panel's cue to redraw)
        self._steps_seen: set[str] = set()  # sources whose running jobs have logged steps
        self.steps_probe = _STEPS_PROBE  # seconds between looks while none were seen (0: a pruner waits on them)
        self._steps_read_at: dict[str, float] = {}
        self._polling: dict[str, asyncio.Task[Any]] = {}  # source -> its poll in flight
        self._collecting: dict[str, asyncio.Task[Any]] = {}  # source -> its collection in flight
        self._last_poll: dict[str, float] = {}
        self._last_collect: dict[str, float] = {}

    def cancel(self, source: ComputeSource, job_id: str, what: str) -> None:
        """Stop one job in the background (supervised as ``source``'s)."""
        self.supervisor.spawn(cancel_one(source, job_id, self.notify), source, what)

    def start_polls(self) -> None:
        now = time.monotonic()
        busy = self.run.busy()
        for name, source in self.sources.items():
            if name in self._polling or not self.gates[name].reachable:
                continue
            if name not in busy and not self.run.uncollected[name]:
                continue
            if name in self.dirty or now - self._last_poll.get(name, 0.0) >= self.interval(source):
                self.dirty.discard(name)
                self._last_poll[name] = now
                task = self.supervisor.spawn(self._poll_source(source), None, f"polling {name}")
                self._polling[name] = task
                task.add_done_callback(untrack(self._polling, name))

    async def _poll_source(self, source: ComputeSource) -> None:
        ids = list(self.run.unended(source.name))
        answers: dict[str, Any] | None = {}
        if ids:
            try:
                answers = await source.poll(ids)
                if not isinstance(answers, dict):
                    raise SourceError(f"poll() returned {type(answers).__name__}; it must return {{job id: state}}",
                                      source.name)
            except Exception as exc:  # noqa: BLE001 - counted against the source; asked again next round
                self.supervisor.fault(source, "polling", exc)
                answers = None
        if answers is not None:
            self.faults.ok(source.name, "polling")
            if ids:
                self.supervisor.reached(source)  # it answered: it takes work again
            with self.store.transaction():
                for job_id in ids:
                    self._read_answer(source, job_id, answers.get(job_id))
            await self._read_steps(source)
        todo = self.run.uncollected[source.name]
        if todo and source.name not in self._collecting and self._collection_due(source, len(todo)):
            self._last_collect[source.name] = time.monotonic()
            batch = self.run.take_uncollected(source.name)
            task = self.supervisor.spawn(self._collect(source, batch), None, f"collecting from {source.name}")
            self._collecting[source.name] = task
            task.add_done_callback(untrack(self._collecting, source.name))

    async def _read_steps(self, source: ComputeSource) -> None:
        """Running jobs' new intermediate metrics into the ledger: one call per source per poll once
        the source's jobs log steps; until then at most every ``steps_probe`` seconds (a sweep whose
        jobs never log steps costs no extra request per poll; the last steps come with the results)."""
        running = {job_id: live for job_id, live in self.run.unended(source.name).items()
                   if live.state == JobState.RUNNING}
        now = time.monotonic()
        if not running or (source.name not in self._steps_seen
                           and now - self._steps_read_at.get(source.name, -1e9) < self.steps_probe):
            return
        self._steps_read_at[source.name] = now
        try:
            chunks = await source.read_steps({job_id: live.steps_at for job_id, live in running.items()})
        except Exception as exc:  # noqa: BLE001 - curves wait for the next poll; the run goes on
            self.faults.report(source.name, "reading intermediate metrics", exc)
            return
        found = [(running[j], data) for j, data in (chunks or {}).items() if j in running and data]
        if found:
            self._steps_seen.add(source.name)
            self._store_steps(found)

    def _store_steps(self, chunks: list[tuple[Live, bytes]], final: bool = False) -> None:
        new: list[tuple[Live, list[steps.Row]]] = []
        with self.store.transaction() as conn:
            for live, data in chunks:
                rows: list[steps.Row] = []
                added, used = steps.store(conn, live.tid, live.attempt, data, final, rows)  # final: the job ended
                live.steps_at += used
                self.steps_stored += added
                if rows:
                    new.append((live, rows))
        if self.on_steps is not None and new and not final:
            self.on_steps(new)

    def _collection_due(self, source: ComputeSource, waiting: int) -> bool:
        """Finished jobs come home in batches: at most once per poll interval while the source still
        runs jobs (their slots are free already; a batch costs a transfer), at once for a large
        batch or the source's last jobs."""
        if waiting >= _COLLECT_BATCH or not self.run.unended(source.name):
            return True
        return time.monotonic() - self._last_collect.get(source.name, 0.0) >= self.interval(source)

    def _read_answer(self, source: ComputeSource, job_id: str, answer: Any) -> None:
        """One job's answer in a poll: a state, or no usable answer (asked again; LOST only after
        ``unknown_timeout`` of rounds without one)."""
        key = (source.name, job_id)
        live = self.run.live.get(key)
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
            self.run.end(key, state)
        else:
            detail = source.job_detail(job_id)
            if state == JobState.RUNNING and live.started is None:
                live.started = time.time()
            if state != live.state or detail != live.detail:
                live.state, live.detail = state, detail
                self.store.set_state(live.tid, live.attempt, state, detail=detail)
            if live.orphan and self.store.task_state(live.tid) == JobState.COMPLETED:
                self.cancel(source, job_id, "cancelling a surplus run")

    async def _collect(self, source: ComputeSource, finished: dict[str, JobState]) -> None:
        """Bring finished jobs' files home and record their outcomes, off the dispatch path."""
        note = None
        try:
            await source.collect_results(list(finished))
            self.faults.ok(source.name, "collecting results")
        except Exception as exc:  # noqa: BLE001 - tried again; after max_failures, recorded with the reason
            if self.supervisor.fault(source, "collecting results", exc) < self.max_failures:
                self.run.uncollect(source.name, finished)
                return
            note = f"its files could not be brought back from {source.name}: {describe_error(exc, 200)}"
        outcomes = {job_id: await self._outcome(source, job_id, state, note) for job_id, state in finished.items()}
        lives = {job_id: self.run.live[(source.name, job_id)] for job_id in finished
                 if (source.name, job_id) in self.run.live}
        rest = jobpaths.read_local({j: (source.job_dir(live.job_name), live.steps_at) for j, live in lives.items()},
                                limit=1 << 30)  # the files are home now: the last steps, whole
        with self.store.transaction():
            self._store_steps([(lives[j], data) for j, data in rest.items()], final=True)
            for job_id, outcome in outcomes.items():
                self._record(source, job_id, outcome)

    async def _outcome(self, source: ComputeSource, job_id: str, state: JobState, note: str | None) -> JobOutcome:
        live = self.run.live.get((source.name, job_id))
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
        live = self.run.remove(key)
        tid, attempt = live.tid, live.attempt
        if tid in self.run.prunes and outcome.state in (JobState.CANCELLED, JobState.LOST, JobState.FAILED):
            why, step = self.run.prunes[tid]  # stopped by the search's pruner: its own end
            outcome = dataclasses.replace(outcome, state=JobState.PRUNED, error=f"pruned at step {step:g}: {why}")
        elif tid in self.run.cancels and outcome.state in (JobState.LOST, JobState.FAILED):
            outcome = dataclasses.replace(outcome, state=JobState.CANCELLED)  # what the user asked for: no retry
        meaning = self.store.finish(tid, attempt, outcome)
        self.run.finished(source.name, live, outcome.state)
        if meaning == "won":  # an earlier attempt came back first: stop the newer ones
            for s, j in self.run.attempts_of(tid):
                self.cancel(self.sources[s], j, "cancelling a newer attempt")
        self.retries.conclude(tid, attempt, outcome, meaning)
