"""Live attempts, from submission to their recorded end: polling, collection, outcomes, retries.

A mixin of ``DistributedJobManager``.  ``Live`` is the manager's record of one attempt out on
a source (the one owner of that fact; the ledger holds the durable copy).  A poll asks a
source about its live job ids only; an answer the manager cannot read is asked again and
turns LOST only after ``unknown_timeout``.  Finished jobs' files come home off the dispatch
path, and their outcomes are recorded in one transaction.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Optional

from . import steps
from .errors import SourceError, describe_error
from .source import ComputeSource, reported_state
from .state import JobOutcome, JobState

Key = tuple[str, str]  # (source name, job id)
_COLLECT_BATCH = 256  # finished jobs that are collected at once, whatever the time since the last batch
_STEPS_PROBE = 5.0  # seconds between looks for intermediate metrics on a source whose jobs have logged none yet


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
    steps_at: int = 0  # bytes of its metrics.jsonl already in the ledger


class PollingMixin:
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
            if name in self._dirty or now - self._last_poll.get(name, 0.0) >= self.interval(source):
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
            if ids:
                self._reached(source)  # it answered: it takes work again
            with self.store.transaction():
                for job_id in ids:
                    self._read_answer(source, job_id, answers.get(job_id))
            await self._read_steps(source)
        todo = self._uncollected[source.name]
        if todo and source.name not in self._collecting and self._collection_due(source, len(todo)):
            self._last_collect[source.name] = time.monotonic()
            batch = dict(todo)
            todo.clear()
            task = self._spawn(self._collect(source, batch), None, f"collecting from {source.name}")
            self._collecting[source.name] = task
            task.add_done_callback(lambda t, n=source.name: self._collecting.pop(n, None))

    async def _read_steps(self, source: ComputeSource) -> None:
        """Running jobs' new intermediate metrics into the ledger: one call per source per poll once
        the source's jobs log steps; until then at most every ``_STEPS_PROBE`` seconds (a sweep whose
        jobs never log steps costs no extra request per poll; the last steps come with the results)."""
        running = {job_id: live for (name, job_id), live in self.live.items()
                   if name == source.name and live.ended is None and live.state == JobState.RUNNING}
        now = time.monotonic()
        if not running or (source.name not in self._steps_seen
                           and now - self._steps_read_at.get(source.name, -_STEPS_PROBE) < _STEPS_PROBE):
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
        with self.store.transaction() as conn:
            for live, data in chunks:
                added, used = steps.store(conn, live.tid, live.attempt, data, final)  # final: the job ended
                live.steps_at += used
                self.steps_stored += added

    def _collection_due(self, source: ComputeSource, waiting: int) -> bool:
        """Finished jobs come home in batches: at most once per poll interval while the source still
        runs jobs (their slots are free already; a batch costs a transfer), at once for a large
        batch or the source's last jobs."""
        if waiting >= _COLLECT_BATCH or not any(name == source.name and live.ended is None
                                                for (name, _), live in self.live.items()):
            return True
        return time.monotonic() - self._last_collect.get(source.name, 0.0) >= self.interval(source)

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
        lives = {job_id: self.live[(source.name, job_id)] for job_id in finished if (source.name, job_id) in self.live}
        rest = steps.read_local({j: (source.job_dir(live.job_name), live.steps_at) for j, live in lives.items()},
                                limit=1 << 30)  # the files are home now: the last steps, whole
        with self.store.transaction():
            self._store_steps([(lives[j], data) for j, data in rest.items()], final=True)
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
