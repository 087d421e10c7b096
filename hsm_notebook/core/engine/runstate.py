"""The run state: what one run of the engine knows about its attempts, held in one place.

``RunState`` is the one holder of these facts while a sweep runs (the ledger holds the durable
copy): the live attempts and their job names, slots in use, submissions in flight (their
reserved slots), attempts that ended and wait for collection, cancels asked for, and each
source's throughput.  The engine's parts (dispatch, polling, supervision, control) receive it
and change it only through its methods, so the counts can never drift apart.  A source that
needs a job's name gets the read-only :class:`SourceNames` view, never a copy.

Everything here runs on the loop thread; no method awaits.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from ..model.state import JobState

Key = tuple[str, str]  # (source name, job id)
_RECENT = 500  # completion times kept per source for "per minute"


@dataclass
class Live:
    """One attempt out on a source, from its submission until its end is recorded."""

    tid: str
    attempt: int
    job_name: str
    state: JobState = JobState.QUEUED
    detail: str | None = None
    orphan: bool = False  # failed over: its task was queued again elsewhere
    ended: JobState | None = None  # the source said it ended; its files are being collected
    unknown_since: float | None = None  # first round without a usable answer, in a row
    unknown_why: str | None = None
    steps_at: int = 0  # bytes of its metrics.jsonl already in the ledger
    since: float = field(default_factory=time.time)  # when it was handed over (or re-adopted)
    started: float | None = None  # when it was first seen RUNNING


@dataclass
class Throughput:
    """What one source got done in this run (``sources_status()``; the ``weighted`` strategy)."""

    completed: int = 0
    failed: int = 0  # every other end: FAILED, LOST, CANCELLED
    average_duration: float | None = None  # seconds, over every end
    done_at: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_RECENT))

    def per_minute(self, now: float) -> int:
        return sum(1 for t in self.done_at if now - t <= 60)


class SourceNames(Mapping[str, str]):
    """Read-only ``job id -> job name`` of one source's live attempts: the view a source is given
    (as ``source.job_names``) to find a job's folder from its id.  The run state owns the fact."""

    def __init__(self, run: RunState, source: str) -> None:
        self._run, self._source = run, source

    def __getitem__(self, job_id: str) -> str:
        return self._run.live[(self._source, job_id)].job_name

    def __iter__(self) -> Iterator[str]:
        return iter([job_id for (name, job_id) in self._run.live if name == self._source])

    def __len__(self) -> int:
        return sum(1 for (name, _) in self._run.live if name == self._source)

    def __repr__(self) -> str:
        return f"<job names of {self._source}: {len(self)}>"


class RunState:
    """The facts of one run, each held once (see the module's docstring)."""

    def __init__(self) -> None:
        self.live: dict[Key, Live] = {}
        #: task id -> (source, attempt) while its ``submit_job`` runs
        self.submitting: dict[str, tuple[str, int]] = {}
        #: tasks whose cancel was asked and is not recorded yet
        self.cancels: set[str] = set()
        #: of those, the ones a search's pruner stopped: task id -> (why, at which step); they end PRUNED
        self.prunes: dict[str, tuple[str, float]] = {}
        #: per source: job id -> the state it ended in, waiting for its files to come home
        self.uncollected: dict[str, dict[str, JobState]] = collections.defaultdict(dict)
        self.throughput: dict[str, Throughput] = collections.defaultdict(Throughput)
        self._running: collections.Counter[str] = collections.Counter()  # live attempts not ended
        self._reserved: collections.Counter[str] = collections.Counter()  # submissions in flight

    # -- slots ---------------------------------------------------------------------------
    def load(self, source: str) -> int:
        """Slots of ``source`` in use: its live attempts not ended plus submissions in flight."""
        return self._running[source] + self._reserved[source]

    def running(self, source: str) -> int:
        """Live attempts of ``source`` the source has not said ended."""
        return self._running[source]

    def reserve(self, source: str) -> None:
        """A submission to ``source`` is about to start: its slot counts from now."""
        self._reserved[source] += 1

    def release(self, source: str) -> None:
        """The submission returned (as a live attempt, or failed)."""
        self._reserved[source] -= 1

    # -- live attempts -------------------------------------------------------------------
    def add(self, key: Key, live: Live) -> None:
        self.live[key] = live
        if live.ended is None:
            self._running[key[0]] += 1

    def end(self, key: Key, state: JobState) -> None:
        """The source says the job ended: its slot is free from now on; its files wait for collection."""
        live = self.live.get(key)
        if live is None:
            return
        if live.ended is None:
            live.ended = state
            self._running[key[0]] -= 1
        self.uncollected[key[0]][key[1]] = state

    def remove(self, key: Key) -> Live:
        """The attempt's end is recorded: it leaves the run."""
        live = self.live.pop(key)
        if live.ended is None:
            self._running[key[0]] -= 1
        return live

    def names(self, source: str) -> SourceNames:
        return SourceNames(self, source)

    def unended(self, source: str) -> dict[str, Live]:
        """``source``'s live attempts that have not ended (what a poll asks about)."""
        return {job_id: live for (name, job_id), live in self.live.items() if name == source and live.ended is None}

    def busy(self) -> set[str]:
        """Sources with an attempt that has not ended."""
        return {name for (name, _), live in self.live.items() if live.ended is None}

    def only_orphans(self) -> bool:
        """No live attempt but orphans (failed over; their tasks wait elsewhere)."""
        return all(live.orphan for live in self.live.values())

    def attempts_of(self, tid: str) -> list[Key]:
        return [key for key, live in self.live.items() if live.tid == tid]

    # -- collection ----------------------------------------------------------------------
    def take_uncollected(self, source: str) -> dict[str, JobState]:
        """The ended jobs of ``source`` whose collection starts now."""
        batch = dict(self.uncollected[source])
        self.uncollected[source].clear()
        return batch

    def uncollect(self, source: str, batch: Mapping[str, JobState]) -> None:
        """A collection failed: its jobs wait for the next one."""
        self.uncollected[source].update(batch)

    def any_uncollected(self) -> bool:
        return any(self.uncollected.values())

    # -- throughput ----------------------------------------------------------------------
    def finished(self, source: str, live: Live, state: JobState, now: float | None = None) -> None:
        """Count an attempt's recorded end in its source's throughput."""
        now = time.time() if now is None else now
        t = self.throughput[source]
        if state == JobState.COMPLETED:
            t.completed += 1
            t.done_at.append(now)
        else:
            t.failed += 1
        duration = max(0.0, now - (live.started or live.since))
        n = t.completed + t.failed
        avg = t.average_duration
        t.average_duration = duration if avg is None else avg + (duration - avg) / n

    def average_duration(self, source: str) -> float | None:
        t = self.throughput.get(source)
        return t.average_duration if t is not None else None
